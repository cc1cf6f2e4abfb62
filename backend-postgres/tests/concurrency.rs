//! Races and session ends against a real Postgres, each interleaving forced
//! deterministically: a second connection holds a lock, a test-only trigger
//! parks a statement on an advisory lock the test holds, and the test
//! watches `pg_stat_activity` until every party is exactly where the race
//! needs it before it lets them go on. Every test names the property it
//! pins down, and each of them failed on the code before its fix (see the
//! backend README's test list).

mod common;

use std::str::FromStr;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection};
use weir::{Backend, BackendError};
use weir_core::cmd;
use weir_core::{
    answer_of, Acquired, ClaimerConfig, Command, Enqueued, Epoch, JobId, Millis, NewJob, Outcome,
    ProcessId, Receipt, Reject, Request, SemaphoreName, SlotIndex, StateName, Timestamp, UniqueKey,
    World, WorldConfig,
};
use weir_pg_harness::{test_database, TestDatabase};
use weir_postgres::{PgBackend, PgConfig, SchemaName};
use weir_test_kit::{job, queue};

/// How long a test waits for a party to reach the point a race needs.
const REACH_WITHIN: Duration = Duration::from_secs(10);

/// [`PgBackend::execute_at`] of one request, answered with its own type.
async fn run_at<R: Request>(
    backend: &PgBackend,
    now: Timestamp,
    request: R,
) -> Result<R::Output, BackendError> {
    let outcome = backend.execute_at(now, request.into()).await?;
    Ok(answer_of::<R>(outcome))
}

fn keyed(key: &str) -> NewJob {
    let mut j = job("k");
    j.unique_key = Some(UniqueKey::new(key).unwrap());
    j
}

/// A second backend on `db` (a second process, as far as the server can
/// tell), its connections tagged with `application_name = name` so the
/// test can find them in `pg_stat_activity`. The schema is already
/// migrated.
async fn process(db: &TestDatabase, name: &str, world: WorldConfig) -> PgBackend {
    let options = PgConnectOptions::from_str(db.url_as_app_user())
        .unwrap()
        .application_name(name);
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .expect("connect as weir_app");
    let config = PgConfig {
        schema: SchemaName::new("weir").unwrap(),
        world,
        notify: true,
        ..PgConfig::default()
    };
    PgBackend::new(pool, config).expect("valid config")
}

/// A fresh migrated database with no backend of its own.
async fn database() -> TestDatabase {
    let db = test_database().await;
    let backend = process(&db, "weir-migrate", WorldConfig::default()).await;
    backend.migrate().await.expect("migrate");
    backend.pool().close().await;
    db
}

/// Polls `condition` (a boolean SQL expression over `pg_stat_activity`,
/// run as the superuser, who sees every session) until it holds.
async fn until(superuser: &PgPool, condition: &str, what: &str) {
    let sql = format!("SELECT {condition}");
    let start = Instant::now();
    loop {
        let holds: bool = sqlx::query_scalar(&sql).fetch_one(superuser).await.unwrap();
        if holds {
            return;
        }
        assert!(
            start.elapsed() < REACH_WITHIN,
            "never reached: {what} ({condition})"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `SELECT EXISTS` over this database's sessions of `application_name`
/// `app`, waiting on a lock of `event` (`advisory`, `transactionid`,
/// `relation`, ...).
fn waiting(app: &str, event: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM pg_stat_activity
                 WHERE datname = current_database() AND application_name = '{app}'
                   AND state = 'active' AND wait_event_type = 'Lock'
                   AND wait_event = '{event}')"
    )
}

/// Creates a trigger function `weir.park()` that, for the rows `when`
/// selects (a condition over `NEW`/`OLD`), waits for the transaction-level
/// advisory lock 4242 in shared mode: while the test holds it exclusively,
/// the statement that fired the trigger is parked there, its row locks
/// held and its transaction open.
async fn park_on(superuser: &PgPool, table: &str, timing: &str, when: &str) {
    sqlx::raw_sql(&format!(
        r"CREATE FUNCTION weir.park() RETURNS trigger LANGUAGE plpgsql AS $$
          BEGIN
              IF {when} THEN PERFORM pg_advisory_xact_lock_shared(4242); END IF;
              RETURN NEW;
          END $$;
          CREATE TRIGGER park {timing} ON weir.{table}
              FOR EACH ROW EXECUTE FUNCTION weir.park();"
    ))
    .execute(superuser)
    .await
    .unwrap();
}

/// Makes every job insert sleep `seconds` first (a `BEFORE INSERT`
/// trigger), after its statement's snapshot.
async fn slow_inserts(superuser: &PgPool, seconds: f64) {
    sqlx::raw_sql(&format!(
        r"CREATE FUNCTION weir.slow() RETURNS trigger LANGUAGE plpgsql AS $$
          BEGIN PERFORM pg_sleep({seconds}); RETURN NEW; END $$;
          CREATE TRIGGER slow BEFORE INSERT ON weir.jobs
              FOR EACH ROW EXECUTE FUNCTION weir.slow();"
    ))
    .execute(superuser)
    .await
    .unwrap();
}

/// A session holding the advisory lock 4242 that [`park_on`] waits for.
async fn gate(db: &TestDatabase) -> PgConnection {
    let mut gate = PgConnection::connect(db.url()).await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(4242)")
        .execute(&mut gate)
        .await
        .unwrap();
    gate
}

async fn open_gate(gate: &mut PgConnection) {
    let released: bool = sqlx::query_scalar("SELECT pg_advisory_unlock(4242)")
        .fetch_one(gate)
        .await
        .unwrap();
    assert!(released);
}

// ---------------------------------------------------------------------
// Defect 1: `CancelAttempts` (a handler returning `JobOutcome::Cancel`).
// ---------------------------------------------------------------------

/// `CancelAttempts` answers per receipt, in input order, exactly as
/// `World::apply` does — a cancelled job's epoch is bumped, so a second
/// copy of the same receipt is stale — and leaves the same jobs; an
/// oversized batch is refused whole. Like the memory backend, it sends no
/// cancel wake-up: the holder asked for it and its handler has ended.
#[tokio::test]
async fn cancel_attempts_gives_the_worlds_answers() {
    let world_config = WorldConfig {
        batch_max: 6,
        ..WorldConfig::default()
    };
    let (_db, backend) = common::backend(world_config.clone()).await;
    let mut world = World::new(world_config);
    let mut step = |now: i64, command: Command| {
        let backend = backend.clone();
        let expected = world.apply(Timestamp(now), command.clone());
        async move {
            let actual = backend.execute_at(Timestamp(now), command.clone()).await;
            let actual = actual.map_err(|e| e.to_string());
            assert_eq!(actual, Ok(expected.clone()), "{command:?}");
            expected
        }
    };
    step(
        0,
        Command::Enqueue(cmd::Enqueue {
            jobs: vec![job("k"), job("k"), job("k")],
        }),
    )
    .await;
    let acquired = step(
        0,
        Command::ClaimerAcquire(cmd::ClaimerAcquire {
            queue: queue(),
            process: ProcessId(7),
        }),
    )
    .await;
    let (claimer, _) = answer_of::<cmd::ClaimerAcquire>(acquired).expect("no claimer lease");
    let claimed = step(
        1,
        Command::Claim(cmd::Claim {
            queue: queue(),
            claimer,
            max: 3,
            kinds: None,
        }),
    )
    .await;
    let claimed = answer_of::<cmd::Claim>(claimed).expect("no claim");
    let r: Vec<Receipt> = claimed.jobs.iter().map(|j| j.receipt).collect();
    assert_eq!(r.len(), 3);
    let mut listener = backend.listener().await.unwrap();
    let answers = step(
        2,
        Command::CancelAttempts(cmd::CancelAttempts {
            receipts: vec![
                r[0],
                r[0],
                Receipt {
                    job: r[1].job,
                    epoch: Epoch(9),
                },
                Receipt {
                    job: JobId(99),
                    epoch: Epoch(1),
                },
                r[2],
            ],
        }),
    )
    .await;
    // Spelled out, so the test says what the world says.
    assert_eq!(
        answers,
        Outcome::AttemptsCancelled(Ok(vec![
            Ok(()),
            Err(Reject::StaleEpoch {
                current: Epoch(2),
                presented: Epoch(1)
            }),
            Err(Reject::StaleEpoch {
                current: Epoch(1),
                presented: Epoch(9)
            }),
            Err(Reject::UnknownJob { job: JobId(99) }),
            Ok(()),
        ]))
    );
    assert_eq!(
        listener.wait(Duration::from_millis(300)).await.unwrap(),
        None,
        "a handler's own cancel wakes nobody (as on the memory backend)"
    );
    step(
        3,
        Command::Complete(cmd::Complete {
            receipts: vec![r[1]],
        }),
    )
    .await;
    let done = step(
        4,
        Command::CancelAttempts(cmd::CancelAttempts {
            receipts: vec![r[1]],
        }),
    )
    .await;
    assert_eq!(
        done,
        Outcome::AttemptsCancelled(Ok(vec![Err(Reject::NotRunning {
            state: StateName::Completed
        })]))
    );
    step(
        5,
        Command::CancelAttempts(cmd::CancelAttempts { receipts: vec![] }),
    )
    .await;
    let too_many = step(
        6,
        Command::CancelAttempts(cmd::CancelAttempts {
            receipts: vec![r[1]; 7],
        }),
    )
    .await;
    assert_eq!(
        too_many,
        Outcome::AttemptsCancelled(Err(Reject::BatchTooLarge { len: 7, max: 6 }))
    );
    let stored = backend.snapshot().await.unwrap().jobs;
    let expected: Vec<_> = world.jobs().cloned().collect();
    assert_eq!(stored, expected);
}

// ---------------------------------------------------------------------
// Defect 7: an enqueue that answers "not applied" after part of it
// committed.
// ---------------------------------------------------------------------

/// A batch `[plain, keyed "k"]` whose key a concurrent transaction inserts
/// between the batch's snapshot and its insert. The interleaving: the
/// other transaction holds "k" uncommitted, so the enqueue waits on it; a
/// third session queues for an `ACCESS EXCLUSIVE` lock on `jobs` behind the
/// enqueue; the other transaction commits. Whatever the enqueue does next
/// in a new statement waits behind that lock, and is terminated there.
///
/// The answer must be true to what committed: `Ok` with "k" a duplicate
/// of the other job and the plain job stored; or an error saying the batch
/// may have been applied (`Lost`); or, if it says "not applied"
/// (`Unavailable`), no job of the batch may be stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_never_says_not_applied_after_part_of_it_committed() {
    let db = database().await;
    let superuser = db.pool().await;
    let backend = process(&db, "weir-enqueue", WorldConfig::default()).await;
    let other = process(&db, "weir-other", WorldConfig::default()).await;
    let mut holder = other.pool().begin().await.unwrap();
    let held = other
        .enqueue(&mut *holder, vec![keyed("k")])
        .await
        .unwrap()
        .unwrap()[0];
    let enqueue = {
        let backend = backend.clone();
        tokio::spawn(async move {
            backend
                .execute(Command::Enqueue(cmd::Enqueue {
                    jobs: vec![job("k"), keyed("k")],
                }))
                .await
        })
    };
    until(
        &superuser,
        &waiting("weir-enqueue", "transactionid"),
        "the enqueue waits for the uncommitted key",
    )
    .await;
    let mut locker = PgConnection::connect(db.url()).await.unwrap();
    sqlx::raw_sql("SET application_name = 'weir-locker'; BEGIN")
        .execute(&mut locker)
        .await
        .unwrap();
    let lock = tokio::spawn(async move {
        sqlx::query("LOCK TABLE weir.jobs IN ACCESS EXCLUSIVE MODE")
            .execute(&mut locker)
            .await
            .unwrap();
        locker
    });
    until(
        &superuser,
        &waiting("weir-locker", "relation"),
        "the lock queues behind the enqueue",
    )
    .await;
    holder.commit().await.unwrap();
    // Either the enqueue is done, or a statement after its first one waits
    // behind the lock: terminate it there.
    let start = Instant::now();
    let mut terminated = 0i64;
    while !enqueue.is_finished() {
        terminated = sqlx::query_scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = 'weir-enqueue'
               AND state = 'active' AND wait_event_type = 'Lock' AND wait_event = 'relation'",
        )
        .fetch_one(&superuser)
        .await
        .unwrap();
        if terminated > 0 {
            break;
        }
        assert!(
            start.elapsed() < REACH_WITHIN,
            "the enqueue neither ended nor waited"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let answer = enqueue.await.unwrap();
    let mut locker = lock.await.unwrap();
    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    let stored: Vec<(i64, Option<String>)> =
        sqlx::query_as("SELECT id, unique_key FROM weir.jobs ORDER BY id")
            .fetch_all(&superuser)
            .await
            .unwrap();
    eprintln!("terminated {terminated}; answer {answer:?}; stored {stored:?}");
    match answer {
        Ok(Outcome::Enqueued(Ok(done))) => {
            assert_eq!(
                done[1],
                Enqueued {
                    id: held.id,
                    duplicate: true
                }
            );
            assert!(!done[0].duplicate);
            let mut expected = vec![(held.id.0, Some("k".to_string())), (done[0].id.0, None)];
            expected.sort();
            assert_eq!(stored, expected);
        }
        Err(BackendError::Lost(_)) => {}
        Err(BackendError::Unavailable(message)) => assert_eq!(
            stored,
            vec![(held.id.0, Some("k".to_string()))],
            "told Unavailable (not applied: {message}), yet a job of the batch committed"
        ),
        other => panic!("unexpected answer {other:?}"),
    }
}

// ---------------------------------------------------------------------
// Defect 9: a claimer take-over racing its owner's claim-and-refresh.
// ---------------------------------------------------------------------

/// The owner's lease is idle enough to be taken over (last claim at 0,
/// idle threshold 10 s, now 10 s) when it claims, so its claim refreshes
/// the lease row. The refresh is parked (a trigger on the refreshing
/// update, the row locked and the claim uncommitted) while a second
/// process runs its take-over of the only slot; then the claim commits.
/// The two answers must be those of one serial order of `World::apply`:
/// claim first (the refreshed slot is not takeable: `NoClaimerSlot`), or
/// take-over first (the claim is refused with `ClaimerLeaseLost`), never
/// a successful claim and a take-over both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_never_overwrites_a_concurrent_claim_and_refresh() {
    let world_config = WorldConfig {
        claimer: ClaimerConfig {
            slots_per_queue: 1,
            lease_ttl: Millis(30_000),
            idle_threshold: Millis(10_000),
        },
        ..WorldConfig::default()
    };
    let db = database().await;
    let superuser = db.pool().await;
    let owner = process(&db, "weir-owner", world_config.clone()).await;
    let rival = process(&db, "weir-rival", world_config.clone()).await;
    let acquire = |process| {
        Command::ClaimerAcquire(cmd::ClaimerAcquire {
            queue: queue(),
            process: ProcessId(process),
        })
    };
    let enqueue = Command::Enqueue(cmd::Enqueue {
        jobs: vec![job("k")],
    });
    let mut world = World::new(world_config);
    world.apply(Timestamp(0), enqueue.clone());
    owner.execute_at(Timestamp(0), enqueue).await.unwrap();
    let opened = world.apply(Timestamp(0), acquire(1));
    assert_eq!(
        owner.execute_at(Timestamp(0), acquire(1)).await.unwrap(),
        opened
    );
    let (claimer, how) = answer_of::<cmd::ClaimerAcquire>(opened.clone()).expect("no lease");
    assert_eq!(how, Acquired::Opened, "no lease: {opened:?}");
    let claim = Command::Claim(cmd::Claim {
        queue: queue(),
        claimer,
        max: 1,
        kinds: None,
    });
    let serial = |first: &Command, second: &Command| {
        let mut w = world.clone();
        let a = w.apply(Timestamp(10_000), first.clone());
        let b = w.apply(Timestamp(10_000), second.clone());
        (a, b)
    };
    let claim_first = serial(&claim, &acquire(2));
    let (takeover_first_takeover, takeover_first_claim) = serial(&acquire(2), &claim);
    let takeover_first = (takeover_first_claim, takeover_first_takeover);
    assert!(matches!(
        claim_first.1,
        Outcome::ClaimerAcquired(Err(Reject::NoClaimerSlot { .. }))
    ));
    assert!(matches!(
        takeover_first.0,
        Outcome::Claimed(Err(Reject::ClaimerLeaseLost { .. }))
    ));

    park_on(
        &superuser,
        "claimer_leases",
        "BEFORE UPDATE",
        "NEW.lease_epoch = OLD.lease_epoch AND NEW.owner = OLD.owner",
    )
    .await;
    let mut gate = gate(&db).await;
    let claiming = {
        let owner = owner.clone();
        let claim = claim.clone();
        tokio::spawn(async move { owner.execute_at(Timestamp(10_000), claim).await })
    };
    until(
        &superuser,
        &waiting("weir-owner", "advisory"),
        "the owner's claim parks in its lease refresh",
    )
    .await;
    let taking = {
        let rival = rival.clone();
        tokio::spawn(async move { rival.execute_at(Timestamp(10_000), acquire(2)).await })
    };
    // The take-over reads the lease rows and then writes one; whichever of
    // the two the row lock stops, it waits for the owner's transaction.
    until(
        &superuser,
        &format!(
            "{} OR {}",
            waiting("weir-rival", "transactionid"),
            waiting("weir-rival", "tuple")
        ),
        "the take-over waits on the owner's row lock",
    )
    .await;
    open_gate(&mut gate).await;
    let claimed = claiming.await.unwrap().unwrap();
    let taken = taking.await.unwrap().unwrap();
    let got = (claimed, taken);
    assert!(
        got == claim_first || got == takeover_first,
        "no serial order explains the answers: claim {:?}, take-over {:?};\n\
         claim first gives {:?},\ntake-over first gives {:?}",
        got.0,
        got.1,
        claim_first,
        takeover_first
    );
    // And the stored lease is the one that order leaves.
    let lease: (i64, i64) = sqlx::query_as(
        "SELECT owner, lease_epoch FROM weir.claimer_leases WHERE queue = 'default' AND slot = 0",
    )
    .fetch_one(&superuser)
    .await
    .unwrap();
    let expected = if got == claim_first { (1, 1) } else { (2, 2) };
    assert_eq!(lease, expected);
}

// ---------------------------------------------------------------------
// Defect 17: two processes creating the same semaphore at once.
// ---------------------------------------------------------------------

/// The first process's `SlotTry` creates semaphore `name` and is parked
/// (a trigger, after its row is inserted and before its transaction
/// commits) while a second process's `SlotTry` of the same name runs and
/// waits on the first's uncommitted row; then the first commits. The
/// second must get the world's answer for "first, then second" — not
/// `Lost`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_creator_of_a_semaphore_sees_the_first_ones() {
    let db = database().await;
    let superuser = db.pool().await;
    let first = process(&db, "weir-first", WorldConfig::default()).await;
    let second = process(&db, "weir-second", WorldConfig::default()).await;
    park_on(
        &superuser,
        "semaphores",
        "AFTER INSERT",
        "current_setting('application_name') = 'weir-first'",
    )
    .await;
    let try_slot = |name: &str, permits: u16, slot: u16, holder: u64| {
        Command::SlotTry(cmd::SlotTry {
            semaphore: SemaphoreName::new(name).unwrap(),
            permits,
            slot: SlotIndex(slot),
            holder: ProcessId(holder),
            lease_ttl: Some(Millis(60_000)),
        })
    };
    // (second's size, second's slot): sizes differ; same size, another
    // slot; same size, the same slot.
    for (case, (permits, slot)) in [(3, 0), (2, 1), (2, 0)].into_iter().enumerate() {
        let name = format!("race{case}");
        let (a, b) = (try_slot(&name, 2, 0, 1), try_slot(&name, permits, slot, 2));
        let mut world = World::new(WorldConfig::default());
        let expected = (
            world.apply(Timestamp(1_000), a.clone()),
            world.apply(Timestamp(1_000), b.clone()),
        );
        let mut gate = gate(&db).await;
        let creating = {
            let first = first.clone();
            tokio::spawn(async move { first.execute_at(Timestamp(1_000), a).await })
        };
        until(
            &superuser,
            &waiting("weir-first", "advisory"),
            "the first creation is parked before its commit",
        )
        .await;
        let racing = {
            let second = second.clone();
            tokio::spawn(async move { second.execute_at(Timestamp(1_000), b).await })
        };
        until(
            &superuser,
            &waiting("weir-second", "transactionid"),
            "the second creation waits on the first's row",
        )
        .await;
        open_gate(&mut gate).await;
        let got = (
            creating.await.unwrap().unwrap(),
            racing.await.unwrap().map_err(|e| e.to_string()),
        );
        assert_eq!(got.0, expected.0, "case {case}: the first creator");
        assert_eq!(
            got.1,
            Ok(expected.1.clone()),
            "case {case}: the second creator (permits {permits}, slot {slot})"
        );
    }
}

// ---------------------------------------------------------------------
// Defect 11: session holds in the slot table.
// ---------------------------------------------------------------------

fn session_try(holder: u64) -> Command {
    Command::SlotTry(cmd::SlotTry {
        semaphore: SemaphoreName::new("warmup").unwrap(),
        permits: 1,
        slot: SlotIndex(0),
        holder: ProcessId(holder),
        lease_ttl: None,
    })
}

fn busy(holder: u64) -> Outcome {
    Outcome::SlotTried(Err(Reject::SlotBusy {
        slot: SlotIndex(0),
        holder: ProcessId(holder),
    }))
}

/// Tries `command` every 20 ms until it is granted; panics with the last
/// answer when `within` passes first.
async fn granted_within(
    backend: &PgBackend,
    command: &Command,
    within: Duration,
) -> weir_core::SlotGrant {
    let start = Instant::now();
    loop {
        let answer = backend.execute(command.clone()).await;
        if let Ok(Outcome::SlotTried(Ok(grant))) = answer {
            return grant;
        }
        assert!(
            start.elapsed() < within,
            "still not granted after {within:?}: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A session hold (`SlotTry` with no lease, as `WarmupConfig { lease_ttl:
/// None }` sends) holds while its holder's session lives, and ends when
/// that session ends: every connection of the holder's backend is
/// terminated (as when its process dies), and another process's try of
/// the slot succeeds within 5 s, under a newer epoch. The holder's backend
/// goes on with a new session, and finds the slot taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_hold_ends_when_its_holders_session_ends() {
    let db = database().await;
    let superuser = db.pool().await;
    let holder = process(&db, "weir-holder", WorldConfig::default()).await;
    let other = process(&db, "weir-other", WorldConfig::default()).await;
    let first = answer_of::<cmd::SlotTry>(holder.execute(session_try(1)).await.unwrap())
        .expect("the slot is free");
    for _ in 0..3 {
        assert_eq!(other.execute(session_try(2)).await.unwrap(), busy(1));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = 'weir-holder'",
    )
    .fetch_one(&superuser)
    .await
    .unwrap();
    assert!(killed >= 1, "the holder had connections");
    let grant = granted_within(&other, &session_try(2), Duration::from_secs(5)).await;
    assert!(grant.epoch > first.epoch);
    let start = Instant::now();
    loop {
        // The first try on the holder's dead session connection may fail.
        match holder.execute(session_try(1)).await {
            Ok(answer) => {
                assert_eq!(answer, busy(2));
                break;
            }
            Err(e) => assert!(start.elapsed() < Duration::from_secs(5), "{e}"),
        }
    }
}

/// The same when the holder's backend is dropped (its process exits): the
/// connection that carried its session hold closes, and the slot frees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_hold_ends_when_its_backend_is_dropped() {
    let db = database().await;
    let holder = process(&db, "weir-holder", WorldConfig::default()).await;
    let other = process(&db, "weir-other", WorldConfig::default()).await;
    assert!(matches!(
        holder.execute(session_try(1)).await.unwrap(),
        Outcome::SlotTried(Ok(_))
    ));
    assert_eq!(other.execute(session_try(2)).await.unwrap(), busy(1));
    drop(holder);
    granted_within(&other, &session_try(2), Duration::from_secs(5)).await;
}

/// A session hold is tied to its session, not to a process id: when the
/// recorded id belongs to another live session (the server reused it),
/// that session's other start time tells them apart, and the slot is free.
/// The row is rewritten as if the holder's id had been reused by a live
/// session of the same role (which may inspect it: a session it may not
/// inspect would count as the holder, a hold is never freed on a guess).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_process_id_is_not_mistaken_for_the_holder() {
    let db = database().await;
    let superuser = db.pool().await;
    let holder = process(&db, "weir-holder", WorldConfig::default()).await;
    let other = process(&db, "weir-other", WorldConfig::default()).await;
    assert!(matches!(
        holder.execute(session_try(1)).await.unwrap(),
        Outcome::SlotTried(Ok(_))
    ));
    assert_eq!(other.execute(session_try(2)).await.unwrap(), busy(1));
    // A live session of weir_app that is not the holder's: one of the
    // other backend's pooled connections, kept checked out.
    let mut stranger = other.pool().acquire().await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *stranger)
        .await
        .unwrap();
    let rewritten = sqlx::query(
        "UPDATE weir.semaphore_slots SET holder_pid = $1
         WHERE name = 'warmup' AND slot = 0 AND holder_pid IS NOT NULL",
    )
    .bind(pid)
    .execute(&superuser)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(rewritten, 1, "the hold records its session");
    let grant = answer_of::<cmd::SlotTry>(other.execute(session_try(2)).await.unwrap())
        .expect("a hold recorded for another session's start time is free");
    assert_eq!(grant.holder, ProcessId(2));
    drop(stranger);
}

/// Migration 4 on a schema a version-3 release left: its slot rows are
/// kept as they were, a session hold it wrote (which records no session)
/// still holds until released or declared crashed, and new session holds
/// record theirs.
#[tokio::test]
async fn a_v3_schema_is_upgraded_to_v4_and_keeps_its_slot_holds() {
    let db = test_database().await;
    let pool = db.app_pool().await;
    let schema = SchemaName::new("weir").unwrap();
    let v3 = weir_postgres::migrate::migrate_to(&pool, &schema, 3)
        .await
        .unwrap();
    assert_eq!((v3.from, v3.to), (0, 3));
    // What a version-3 release wrote: a session hold of process 5 and a
    // lease hold of process 6.
    sqlx::raw_sql(
        "INSERT INTO weir.semaphores (name, permits) VALUES ('old', 3);
         INSERT INTO weir.semaphore_slots (name, slot, epoch, holder, lease_expires_at)
         VALUES ('old', 0, 4, 5, NULL), ('old', 1, 2, 6, 9000000000000), ('old', 2, 0, NULL, NULL);",
    )
    .execute(&pool)
    .await
    .unwrap();
    let before = sqlx::query_as::<_, (i32, i64, Option<i64>, Option<i64>)>(
        "SELECT slot, epoch, holder, lease_expires_at FROM weir.semaphore_slots ORDER BY slot",
    );
    let rows_v3 = before.fetch_all(&pool).await.unwrap();
    // The slot rows are compared as stored: `snapshot` reads the latest
    // schema's job columns, which a version-3 schema does not have.
    let backend = PgBackend::new(pool.clone(), PgConfig::default()).unwrap();
    let report = backend.migrate().await.unwrap();
    assert_eq!(
        (report.from, report.applied),
        (3, (4..=weir_postgres::LATEST_VERSION).collect::<Vec<_>>())
    );
    backend.check_schema().await.unwrap();
    let after = sqlx::query_as::<_, (i32, i64, Option<i64>, Option<i64>)>(
        "SELECT slot, epoch, holder, lease_expires_at FROM weir.semaphore_slots ORDER BY slot",
    );
    assert_eq!(after.fetch_all(&pool).await.unwrap(), rows_v3);
    let try_old = |slot: u16, holder: u64| {
        Command::SlotTry(cmd::SlotTry {
            semaphore: SemaphoreName::new("old").unwrap(),
            permits: 3,
            slot: SlotIndex(slot),
            holder: ProcessId(holder),
            lease_ttl: None,
        })
    };
    assert_eq!(
        backend.execute(try_old(0, 7)).await.unwrap(),
        Outcome::SlotTried(Err(Reject::SlotBusy {
            slot: SlotIndex(0),
            holder: ProcessId(5)
        }))
    );
    answer_of::<cmd::SlotTry>(backend.execute(try_old(2, 7)).await.unwrap())
        .expect("slot 2 is free");
    let recorded: (Option<i32>, bool) = sqlx::query_as(
        "SELECT holder_pid, holder_session_start IS NOT NULL FROM weir.semaphore_slots
         WHERE name = 'old' AND slot = 2",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(recorded.0.is_some() && recorded.1, "{recorded:?}");
    assert_eq!(
        backend
            .execute(Command::ProcessCrashed(cmd::ProcessCrashed {
                process: ProcessId(5)
            }))
            .await
            .unwrap(),
        Outcome::SessionEnded(vec![(SemaphoreName::new("old").unwrap(), SlotIndex(0))])
    );
    assert!(matches!(
        backend.execute(try_old(0, 7)).await.unwrap(),
        Outcome::SlotTried(Ok(_))
    ));
}

// ---------------------------------------------------------------------
// Issue 13: a completion is two statements (the guarded fast update for
// every receipt, then the per-item statement for the rest). An error in
// the second after the first committed is not "certainly not applied".
// ---------------------------------------------------------------------

/// One receipt current and one stale in the same completion: the fast
/// step completes the current one and commits; the per-item step, which
/// answers the stale one, is refused by the server (a test trigger
/// raises on it). The backend must not answer "certainly not applied"
/// (`Unavailable`) while a job of the batch is completed: the honest
/// answer is `Lost` (it may have been applied), or the full answer.
#[tokio::test]
async fn a_completion_never_says_not_applied_after_its_first_step_committed() {
    let db = database().await;
    let superuser = db.pool().await;
    let backend = process(&db, "weir-completer", WorldConfig::default()).await;
    backend
        .execute_at(
            Timestamp(0),
            Command::Enqueue(cmd::Enqueue {
                jobs: vec![job("k")],
            }),
        )
        .await
        .unwrap();
    let (claimer, _) = run_at(
        &backend,
        Timestamp(0),
        cmd::ClaimerAcquire {
            queue: queue(),
            process: ProcessId(1),
        },
    )
    .await
    .unwrap()
    .expect("no claimer lease");
    let claimed = run_at(
        &backend,
        Timestamp(1),
        cmd::Claim {
            queue: queue(),
            claimer,
            max: 1,
            kinds: None,
        },
    )
    .await
    .unwrap()
    .expect("no claim");
    let current = claimed.jobs[0].receipt;
    let stale = Receipt {
        job: current.job,
        epoch: Epoch(current.epoch.0 - 1),
    };
    // The per-item statement is the one whose text names its `winner`.
    sqlx::raw_sql(
        r"CREATE FUNCTION weir.refuse_second_step() RETURNS trigger LANGUAGE plpgsql AS $$
          BEGIN
              IF current_query() LIKE '%winner AS%' THEN
                  RAISE EXCEPTION 'the second step is refused by the test';
              END IF;
              RETURN NULL;
          END $$;
          CREATE TRIGGER refuse_second_step BEFORE UPDATE ON weir.jobs
              FOR EACH STATEMENT EXECUTE FUNCTION weir.refuse_second_step();",
    )
    .execute(&superuser)
    .await
    .unwrap();
    let answer = backend
        .execute_at(
            Timestamp(2),
            Command::Complete(cmd::Complete {
                receipts: vec![current, stale],
            }),
        )
        .await;
    let state: String = sqlx::query_scalar("SELECT state::text FROM weir.jobs WHERE id = $1")
        .bind(current.job.0)
        .fetch_one(&superuser)
        .await
        .unwrap();
    assert_eq!(state, "completed", "the fast step did not commit");
    assert!(
        !matches!(answer, Err(BackendError::Unavailable(_))),
        "told {answer:?} (certainly not applied), yet the job is completed"
    );
}

// ---------------------------------------------------------------------
// Issue 13: an interrupted statement may have committed.
// ---------------------------------------------------------------------

/// A statement ended by an interrupt — a statement timeout, a cancel, a
/// terminated session — may have committed before the server got to the
/// interrupt (the history checker found a cancelled claim whose effect
/// the rest of its history needs: seed 3861 of the soak). Its answer is
/// `Lost` ("may or may not have been applied"), never `Unavailable`.
#[tokio::test]
async fn an_interrupted_statement_is_a_lost_answer_not_a_refusal() {
    let db = database().await;
    let options = PgConnectOptions::from_str(db.url_as_app_user())
        .unwrap()
        .application_name("weir-interrupted")
        .options([("statement_timeout", "50")]);
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .unwrap();
    let backend = PgBackend::new(
        pool,
        PgConfig {
            schema: SchemaName::new("weir").unwrap(),
            ..PgConfig::default()
        },
    )
    .unwrap();
    let superuser = db.pool().await;
    // Every job insert sleeps past the statement timeout.
    slow_inserts(&superuser, 0.2).await;
    let answer = backend
        .execute_at(
            Timestamp(0),
            Command::Enqueue(cmd::Enqueue {
                jobs: vec![job("k")],
            }),
        )
        .await;
    match answer {
        Err(BackendError::Lost(why)) => assert!(why.contains("statement timeout"), "{why}"),
        other => panic!("an interrupted statement answered {other:?}, not Lost"),
    }
}

/// Two enqueues that take the same unique keys in opposite orders, at
/// once. Each inserted its rows in batch order, so each held one key's
/// index entry and waited for the other's: a deadlock, and one of them
/// refused. Found by the history checker's soak (seed 42990: `client 0
/// was refused Enqueue … with no fault on it: deadlock detected`). Rows
/// with keys are inserted in key order, so both take them in one order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueues_taking_the_same_keys_in_opposite_orders_do_not_deadlock() {
    let db = database().await;
    let superuser = db.pool().await;
    // Every job insert sleeps first, so both statements have inserted
    // their first row before either inserts its second.
    slow_inserts(&superuser, 0.3).await;
    let a = process(&db, "weir-keys-a", WorldConfig::default()).await;
    let b = process(&db, "weir-keys-b", WorldConfig::default()).await;
    let enqueue = |keys: [&str; 2]| {
        Command::Enqueue(cmd::Enqueue {
            jobs: keys.iter().map(|k| keyed(k)).collect(),
        })
    };
    let (first, second) = tokio::join!(
        a.execute_at(Timestamp(0), enqueue(["x", "y"])),
        b.execute_at(Timestamp(0), enqueue(["y", "x"])),
    );
    for (who, answer) in [("a", &first), ("b", &second)] {
        assert!(
            matches!(answer, Ok(Outcome::Enqueued(Ok(_)))),
            "enqueue {who} answered {answer:?}"
        );
    }
    // One of them created both jobs; the other found them as duplicates.
    let ids = |answer: &Result<Outcome, BackendError>| {
        let outcome = answer.as_ref().expect("checked above").clone();
        let e = answer_of::<cmd::Enqueue>(outcome).expect("checked above");
        let mut ids: Vec<i64> = e.iter().map(|e| e.id.0).collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&first), ids(&second));
}

/// An enqueue that finds its key held by a finished job, while a prune
/// removes that job. The enqueue read the key's holder in its snapshot
/// and wrote its other rows after the prune had committed: it answered
/// "a duplicate of job K" for a K no longer stored, and no serial order
/// explains it (the enqueue must come before the prune to see K, and its
/// jobs after a claim that began once the prune had returned). Found by
/// the history soak (seed 43890; 11685 and 13212 before it). The
/// enqueue now locks the holder it finds (`FOR KEY SHARE`), so the prune
/// passes over it, or, had the prune locked it first, the enqueue finds
/// it gone and creates the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_never_answers_a_duplicate_of_a_job_a_concurrent_prune_removed() {
    let db = database().await;
    let superuser = db.pool().await;
    let client = process(&db, "weir-dedup", WorldConfig::default()).await;
    let leader = process(&db, "weir-pruner", WorldConfig::default()).await;
    let made = run_at(
        &client,
        Timestamp(1_000),
        cmd::Enqueue {
            jobs: vec![keyed("k")],
        },
    )
    .await
    .expect("the first enqueue failed")
    .expect("the first enqueue failed");
    let held = made[0].id;
    let cancelled = client
        .execute_at(Timestamp(1_000), Command::Cancel(cmd::Cancel { job: held }))
        .await;
    assert!(
        matches!(cancelled, Ok(Outcome::Cancelled(Ok(_)))),
        "{cancelled:?}"
    );
    let grant = run_at(
        &leader,
        Timestamp(2_000),
        cmd::LeaderElect {
            process: weir_core::ProcessId(7),
        },
    )
    .await
    .expect("no leadership")
    .expect("no leadership");
    // The enqueue parks on inserting its new job, after it has read the
    // key's holder.
    park_on(&superuser, "jobs", "BEFORE INSERT", "true").await;
    let mut gate = gate(&db).await;
    let enqueue = tokio::spawn(async move {
        client
            .execute_at(
                Timestamp(2_000),
                Command::Enqueue(cmd::Enqueue {
                    jobs: vec![keyed("k"), job("k")],
                }),
            )
            .await
    });
    until(
        &superuser,
        &waiting("weir-dedup", "advisory"),
        "the enqueue parked",
    )
    .await;
    let pruned = leader
        .execute_at(
            Timestamp(3_000),
            Command::Prune(cmd::Prune {
                leader: grant,
                older_than: Millis(1),
                max: 10,
            }),
        )
        .await;
    open_gate(&mut gate).await;
    let answer = enqueue.await.unwrap();
    let stored: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM weir.jobs WHERE id = $1)")
        .bind(held.0)
        .fetch_one(&superuser)
        .await
        .unwrap();
    let enqueued = answer
        .as_ref()
        .map(|a| answer_of::<cmd::Enqueue>(a.clone()));
    let Ok(Ok(enqueued)) = enqueued else {
        panic!("the enqueue answered {answer:?}")
    };
    // A duplicate of a job still stored, or a new job because the holder
    // was gone: never a duplicate of a removed job, nor a new job beside
    // a holder still there.
    assert_eq!(
        enqueued[0].duplicate,
        stored,
        "the enqueue answered {:?} while job {} is {} (prune: {pruned:?})",
        enqueued[0],
        held.0,
        if stored { "stored" } else { "removed" }
    );
}

// ---------------------------------------------------------------------
// A pause and a claim already under way.
// ---------------------------------------------------------------------

/// A worker process with one available job and a claimer lease on its
/// queue, and an operator process; the claim the worker would send.
async fn worker_and_operator(db: &TestDatabase) -> (PgBackend, PgBackend, Command) {
    let worker = process(db, "weir-claimer", WorldConfig::default()).await;
    let operator = process(db, "weir-pauser", WorldConfig::default()).await;
    worker
        .execute_at(
            Timestamp(0),
            Command::Enqueue(cmd::Enqueue {
                jobs: vec![job("k")],
            }),
        )
        .await
        .unwrap();
    let (claimer, _) = run_at(
        &worker,
        Timestamp(0),
        cmd::ClaimerAcquire {
            queue: queue(),
            process: ProcessId(1),
        },
    )
    .await
    .expect("no claimer lease")
    .expect("no claimer lease");
    let claim = Command::Claim(cmd::Claim {
        queue: queue(),
        claimer,
        max: 1,
        kinds: None,
    });
    (worker, operator, claim)
}

/// Waits until `task` has answered or the sessions of `app` wait on an
/// advisory lock: either is a legitimate order, and the test then judges
/// the answers.
async fn answered_or_waiting<T>(
    superuser: &PgPool,
    task: &tokio::task::JoinHandle<T>,
    app: &str,
    what: &str,
) {
    let start = Instant::now();
    let waits = format!("SELECT {}", waiting(app, "advisory"));
    while !task.is_finished() {
        let waiting: bool = sqlx::query_scalar(&waits)
            .fetch_one(superuser)
            .await
            .unwrap();
        if waiting {
            return;
        }
        assert!(
            start.elapsed() < REACH_WITHIN,
            "{what} neither answered nor waited"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The jobs a claim handed out.
fn claimed_jobs(claimed: &Result<Outcome, BackendError>) -> Vec<JobId> {
    let answer = claimed.as_ref().map(|c| answer_of::<cmd::Claim>(c.clone()));
    let Ok(Ok(claim)) = answer else {
        panic!("the claim answered {claimed:?}")
    };
    claim.jobs.iter().map(|j| j.receipt.job).collect()
}

/// A claim that was under way when a `PauseQueue` ran must be over before
/// the pause answers: once the pause has answered, no claim hands out a
/// job of that queue. The world applies a pause at one instant; a claim
/// that read "not paused" from its statement's snapshot and took its job
/// after the pause had answered fits no serial order with a later command
/// that sees the job still available (the history soak, seed 51168: a
/// `Retry` answered `NotRetryable { Available }` after the pause, and the
/// in-flight claim took that job after both). The claim parks here in
/// its own job update, after its snapshot and its row locks, while the
/// pause runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_answers_only_after_every_claim_under_way_is_over() {
    let db = database().await;
    let superuser = db.pool().await;
    let (worker, operator, claim) = worker_and_operator(&db).await;
    park_on(&superuser, "jobs", "BEFORE UPDATE", "NEW.state = 'running'").await;
    let mut gate = gate(&db).await;
    let claiming = tokio::spawn(async move {
        let answer = worker.execute_at(Timestamp(1_000), claim).await;
        (answer, Instant::now())
    });
    until(
        &superuser,
        &waiting("weir-claimer", "advisory"),
        "the claim parks in its job update",
    )
    .await;
    let pausing = tokio::spawn(async move {
        let answer = operator
            .execute_at(
                Timestamp(1_000),
                Command::PauseQueue(cmd::PauseQueue { queue: queue() }),
            )
            .await;
        (answer, Instant::now())
    });
    answered_or_waiting(&superuser, &pausing, "weir-pauser", "the pause").await;
    open_gate(&mut gate).await;
    let (claimed, claim_answered) = claiming.await.unwrap();
    let (paused, pause_answered) = pausing.await.unwrap();
    assert!(
        matches!(paused, Ok(Outcome::QueuePauseChanged(true))),
        "{paused:?}"
    );
    let jobs = claimed_jobs(&claimed);
    assert!(
        jobs.is_empty() || claim_answered < pause_answered,
        "the claim handed out {jobs:?} {:?} after the pause had answered",
        claim_answered.duration_since(pause_answered),
    );
}

/// The other half of the barrier: a claim that starts while a
/// `PauseQueue` is under way (parked here after it took the queue's pause
/// lock, before it commits) waits for the pause and then takes nothing.
/// On the code before the fix the claim's snapshot saw no pause and it
/// took the job, though the pause went on to answer after it had begun.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_that_starts_while_a_pause_is_under_way_takes_nothing() {
    let db = database().await;
    let superuser = db.pool().await;
    let (worker, operator, claim) = worker_and_operator(&db).await;
    park_on(&superuser, "paused_queues", "BEFORE INSERT", "true").await;
    let mut gate = gate(&db).await;
    let pausing = tokio::spawn(async move {
        operator
            .execute_at(
                Timestamp(1_000),
                Command::PauseQueue(cmd::PauseQueue { queue: queue() }),
            )
            .await
    });
    until(
        &superuser,
        &waiting("weir-pauser", "advisory"),
        "the pause parks in its insert",
    )
    .await;
    let claiming = tokio::spawn(async move { worker.execute_at(Timestamp(1_000), claim).await });
    answered_or_waiting(&superuser, &claiming, "weir-claimer", "the claim").await;
    open_gate(&mut gate).await;
    let paused = pausing.await.unwrap();
    let claimed = claiming.await.unwrap();
    assert!(
        matches!(paused, Ok(Outcome::QueuePauseChanged(true))),
        "{paused:?}"
    );
    let jobs = claimed_jobs(&claimed);
    assert!(
        jobs.is_empty(),
        "the claim that began during the pause handed out {jobs:?}"
    );
}
