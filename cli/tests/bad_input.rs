//! Bad input, the operator's half: what an operator gets wrong with the
//! `weir` binary against a real Postgres (the harness's, or DATABASE_URL's
//! server). Each row runs the binary with one mistake, checks that it exits
//! non-zero with a message naming the input and what is allowed, and then
//! counts what the database holds: a refusal writes nothing. The library's
//! rows are in `tests/tests/bad_input.rs`; `docs/reliability.md` has the
//! table.

use std::time::Duration;

use weir::core::cmd;
use weir::core::{self, Millis, ProcessId, QueueName};
use weir::{Backend, BackendExt};
use weir_pg_harness::test_database;
use weir_postgres::{PgBackend, PgConfig, LATEST_VERSION};

mod common;
use common::weir_timed as weir;

/// Runs `weir` and expects it to refuse with a message containing `says`.
fn refused(args: &[&str], says: &str) -> Duration {
    let (ok, text, took) = weir(args);
    assert!(!ok, "{args:?} succeeded: {text}");
    assert!(text.contains(says), "{args:?}: expected {says:?} in {text}");
    assert!(!text.contains("panicked"), "{args:?}: {text}");
    took
}

/// What the database holds: jobs, paused queues, and the state and epoch
/// of every job, in id order.
async fn stored(pool: &sqlx::PgPool) -> (i64, i64, Vec<(i64, String, i64)>) {
    let counts: (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM weir.jobs), (SELECT count(*) FROM weir.paused_queues)",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    let jobs = sqlx::query_as("SELECT id, state, epoch FROM weir.jobs ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap();
    (counts.0, counts.1, jobs)
}

fn job(queue: &str) -> core::NewJob {
    core::NewJob::new(
        QueueName::new(queue).unwrap(),
        core::Kind::new("email.send").unwrap(),
        core::Payload(b"{}".to_vec()),
    )
}

/// Values out of range, negative numbers, malformed names: each is refused
/// by argument parsing or name validation before the command changes
/// anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_mistakes_in_arguments_are_refused_and_change_nothing() {
    let db = test_database().await;
    let url = db.url_as_app_user();
    let backend = PgBackend::connect(url, 2, PgConfig::default())
        .await
        .unwrap();
    backend.migrate().await.unwrap();
    let jobs = vec![job("mail"), job("mail")];
    backend
        .execute(core::Command::Enqueue(cmd::Enqueue { jobs }))
        .await
        .unwrap();
    let superuser = db.pool().await;
    let before = stored(&superuser).await;
    let jobs = |rest: &[&'static str]| {
        let mut args = vec!["jobs", "--database-url", url];
        args.extend_from_slice(rest);
        args
    };
    let queues = |rest: &[&'static str]| {
        let mut args = vec!["queues", "--database-url", url];
        args.extend_from_slice(rest);
        args
    };
    let table: Vec<(Vec<&str>, &str)> = vec![
        (
            jobs(&["list", "--limit", "-1"]),
            "invalid value '-1' for '--limit <LIMIT>': -1 is not in 1..=10000",
        ),
        (
            jobs(&["list", "--limit", "0"]),
            "invalid value '0' for '--limit <LIMIT>': 0 is not in 1..=10000",
        ),
        (
            jobs(&["list", "--limit", "10001"]),
            "10001 is not in 1..=10000",
        ),
        (
            jobs(&["list", "--limit", "lots"]),
            "invalid value 'lots' for '--limit <LIMIT>'",
        ),
        (
            jobs(&["list", "--after", "-5"]),
            "invalid value '-5' for '--after <AFTER>'",
        ),
        (
            jobs(&["show", "-1"]),
            "invalid value '-1' for '<ID>': -1 is not in 1..",
        ),
        (jobs(&["cancel", "0"]), "invalid value '0' for '<ID>'"),
        (jobs(&["retry", "-7"]), "invalid value '-7' for '<ID>'"),
        (
            jobs(&["list", "--queue", "Bad Queue"]),
            "--queue: queue name has 'B' at byte 0; allowed are [a-z0-9_.-]",
        ),
        (
            jobs(&["list", "--queue", "q'; DROP TABLE weir.jobs; --"]),
            "--queue: queue name has '\\'' at byte 1; allowed are [a-z0-9_.-]",
        ),
        (
            jobs(&["list", "--kind", "email send"]),
            "--kind: job kind has ' ' at byte 5; allowed are [A-Za-z0-9_.:-]",
        ),
        (
            jobs(&["list", "--state", "done"]),
            "--state \"done\": expected one of scheduled, available, running",
        ),
        (
            queues(&["pause", "mail'; DROP TABLE weir.jobs; --"]),
            "queue name has '\\'' at byte 4; allowed are [a-z0-9_.-]",
        ),
        (queues(&["resume", ""]), "queue name must not be empty"),
        (
            queues(&["--connect-timeout-s", "0"]),
            "invalid value '0' for '--connect-timeout-s <CONNECT_TIMEOUT_S>': 0 is not in 1..",
        ),
        (
            vec!["migrate", "--database-url", url, "--connect-timeout-s", "0"],
            "0 is not in 1..",
        ),
    ];
    for (args, says) in &table {
        refused(args, says);
    }
    assert_eq!(stored(&superuser).await, before, "nothing changed");
    // And the same commands, written correctly, work on the same database.
    let (ok, text, _) = weir(&jobs(&["list", "--limit", "1"]));
    assert!(ok && text.contains("email.send"), "{text}");
}

/// An injection attempt in `--schema` is refused by every command before
/// it connects (the same refusal with a database that does not exist),
/// and the database afterwards has the same schemas, its canary table and
/// Weir's rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_injection_in_the_schema_flag_is_refused_before_connecting() {
    let db = test_database().await;
    let superuser = db.pool().await;
    sqlx::raw_sql("CREATE TABLE public.x (id int); INSERT INTO public.x VALUES (1);")
        .execute(&superuser)
        .await
        .unwrap();
    let backend = PgBackend::connect(db.url_as_app_user(), 2, PgConfig::default())
        .await
        .unwrap();
    backend.migrate().await.unwrap();
    let schemas = || async {
        sqlx::query_scalar::<_, String>("SELECT nspname::text FROM pg_namespace ORDER BY 1")
            .fetch_all(&superuser)
            .await
            .unwrap()
    };
    let before = (schemas().await, stored(&superuser).await);
    let nowhere = "postgres://weir@127.0.0.1:1/nowhere";
    let injections = [
        ("weir\"; DROP TABLE x; --", "only [a-z0-9_] are allowed"),
        ("weir; DROP TABLE public.x", "only [a-z0-9_] are allowed"),
        ("public\".\"x", "only [a-z0-9_] are allowed"),
        (
            "pg_catalog",
            "names starting with pg_ are reserved by Postgres",
        ),
    ];
    for url in [db.url_as_app_user(), nowhere] {
        for (schema, why) in injections {
            for command in [
                vec!["migrate", "--database-url", url, "--schema", schema],
                vec!["queues", "--database-url", url, "--schema", schema],
                vec!["jobs", "--database-url", url, "--schema", schema, "list"],
                vec!["workers", "--database-url", url, "--schema", schema],
            ] {
                let says = format!("--schema: invalid schema name {schema:?}: {why}");
                let took = refused(&command, &says);
                assert!(took < Duration::from_secs(3), "refused before connecting");
            }
        }
    }
    let canary: i64 = sqlx::query_scalar("SELECT count(*) FROM public.x")
        .fetch_one(&superuser)
        .await
        .unwrap();
    assert_eq!(canary, 1, "the canary table is intact");
    assert_eq!((schemas().await, stored(&superuser).await), before);
}

/// A database that does not answer: connection refused, a server that
/// accepts TCP and never speaks, an address nothing routes to, and
/// malformed URLs. Each is a clear message and a non-zero exit within the
/// connect timeout, never a hang.
#[test]
fn a_database_url_that_does_not_answer_is_a_clear_error_within_the_timeout() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    // Bound and never accepted: the kernel completes the handshake, and
    // then nothing answers the startup message.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hung_port = hung.local_addr().unwrap().port();
    let unreachable = [
        ("127.0.0.1", closed_port),
        ("127.0.0.1", hung_port),
        // TEST-NET-1 (RFC 5737): routed nowhere, so it times out or is
        // unreachable at once, depending on the machine.
        ("192.0.2.1", 5432),
    ];
    std::thread::scope(|scope| {
        for (host, port) in unreachable {
            for command in ["migrate", "queues", "workers"] {
                scope.spawn(move || {
                    let url = format!("postgres://weir@{host}:{port}/weir");
                    let args = [command, "--database-url", &url, "--connect-timeout-s", "1"];
                    let says =
                        format!("cannot reach the database at {host}:{port}/weir within 1 s");
                    let took = refused(&args, &says);
                    assert!(took < Duration::from_secs(8), "{args:?} took {took:?}");
                });
            }
        }
    });
    drop(hung);
    for url in [
        "not a url",
        "postgres://weir@127.0.0.1:notaport/weir",
        "mysql://weir@127.0.0.1/weir",
        "",
    ] {
        for command in ["migrate", "queues"] {
            let took = refused(&[command, "--database-url", url], "invalid database URL");
            assert!(
                took < Duration::from_secs(3),
                "{url:?} refused without connecting"
            );
        }
    }
}

/// A database Weir was never migrated into, then one a newer release
/// migrated: every command says what to do (`weir migrate`, upgrade weir)
/// and touches nothing; `weir migrate` refuses the newer schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_schema_and_a_newer_schema_are_refused_with_what_to_do() {
    let db = test_database().await;
    let url = db.url_as_app_user();
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
    let empty = relations().await;
    let commands: Vec<Vec<&str>> = vec![
        vec!["queues", "--database-url", url],
        vec!["queues", "--database-url", url, "pause", "mail"],
        vec!["jobs", "--database-url", url, "list"],
        vec!["jobs", "--database-url", url, "show", "1"],
        vec!["jobs", "--database-url", url, "cancel", "1"],
        vec!["workers", "--database-url", url],
    ];
    for args in &commands {
        refused(
            args,
            "there is no Weir schema \"weir\" in this database: run `weir migrate`",
        );
    }
    assert_eq!(relations().await, empty, "no schema or table was created");

    let (ok, text, _) = weir(&["migrate", "--database-url", url]);
    assert!(ok, "{text}");
    let backend = PgBackend::connect(url, 2, PgConfig::default())
        .await
        .unwrap();
    backend
        .execute(core::Command::Enqueue(cmd::Enqueue {
            jobs: vec![job("mail")],
        }))
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO weir.schema_migrations (version, name) VALUES ($1, 'from the future')",
    )
    .bind(LATEST_VERSION + 1)
    .execute(&superuser)
    .await
    .unwrap();
    let versions = || async {
        sqlx::query_scalar::<_, i32>("SELECT version FROM weir.schema_migrations ORDER BY 1")
            .fetch_all(&superuser)
            .await
            .unwrap()
    };
    let before = (
        versions().await,
        stored(&superuser).await,
        relations().await,
    );
    let newer = LATEST_VERSION + 1;
    refused(
        &["migrate", "--database-url", url],
        &format!(
            "schema weir is at version {newer}, newer than this code's {LATEST_VERSION}: upgrade Weir"
        ),
    );
    for args in &commands {
        refused(
            args,
            &format!(
                "schema \"weir\" is at version {newer}, newer than this binary ({LATEST_VERSION}): upgrade weir"
            ),
        );
    }
    assert_eq!(
        (
            versions().await,
            stored(&superuser).await,
            relations().await
        ),
        before,
        "nothing was migrated, paused or cancelled"
    );
}

/// A handler's absurd choice — snoozing a job for `Duration::MAX` — parks
/// it at the end of time (`Timestamp` saturates, nothing overflows), and
/// `weir jobs show` prints the time as milliseconds instead of failing to
/// format a date after the year 9999.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_snoozed_to_the_end_of_time_can_still_be_shown() {
    let db = test_database().await;
    let url = db.url_as_app_user();
    let backend = PgBackend::connect(url, 2, PgConfig::default())
        .await
        .unwrap();
    backend.migrate().await.unwrap();
    backend
        .run(cmd::Enqueue {
            jobs: vec![job("mail")],
        })
        .await
        .unwrap()
        .unwrap();
    let process = ProcessId(5);
    let queue = QueueName::new("mail").unwrap();
    let (claimer, _) = backend
        .run(cmd::ClaimerAcquire {
            queue: queue.clone(),
            process,
        })
        .await
        .unwrap()
        .expect("a free claimer slot");
    let claimed = backend
        .run(cmd::Claim {
            queue,
            claimer,
            max: 1,
            kinds: None,
        })
        .await
        .unwrap()
        .expect("claim");
    let receipt = claimed.jobs[0].receipt;
    let snoozed = backend
        .run(cmd::Snooze {
            snoozes: vec![(receipt, Millis(u64::MAX))],
        })
        .await
        .unwrap();
    assert_eq!(snoozed, Ok(vec![Ok(())]));
    let (ok, text, _) = weir(&["jobs", "--database-url", url, "show", "1"]);
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!(
            "scheduled for t={} ms since the Unix epoch",
            i64::MAX
        )),
        "{text}"
    );
    let (ok, text, _) = weir(&["jobs", "--database-url", url, "cancel", "1"]);
    assert!(
        ok && text.contains("cancelled (it was scheduled)"),
        "{text}"
    );
}
