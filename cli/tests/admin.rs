//! `weir jobs`, `weir queues` and `weir workers` against a real Postgres
//! (the harness starts one when DATABASE_URL is unset), and `weir demo`
//! on Postgres.

use std::sync::Arc;

use weir::core::cmd;
use weir::core::{JobId, Kind, NewJob, Payload, QueueName};
use weir::Backend;
use weir_postgres::{PgBackend, PgConfig};

mod common;
use common::weir;

fn job(queue: &str, kind: &str) -> NewJob {
    NewJob::new(
        QueueName::new(queue).unwrap(),
        Kind::new(kind).unwrap(),
        Payload(br#"{"to":"a@example.com"}"#.to_vec()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_list_show_cancel_retry_and_pause() {
    let db = weir_pg_harness::test_database().await;
    let url = db.url_as_app_user();
    let (ok, text) = weir(&["queues", "--database-url", url]);
    assert!(!ok, "no schema yet");
    assert!(text.contains("run `weir migrate`"), "{text}");

    let backend = Arc::new(
        PgBackend::connect(url, 2, PgConfig::default())
            .await
            .unwrap(),
    );
    backend.migrate().await.unwrap();
    let jobs = vec![
        job("mail", "email.send"),
        job("mail", "email.send"),
        job("reports", "pdf"),
    ];
    backend
        .execute(weir::core::Command::Enqueue(cmd::Enqueue { jobs }))
        .await
        .unwrap();

    let (ok, text) = weir(&["queues", "--database-url", url]);
    assert!(ok, "{text}");
    assert!(text.contains("mail"), "{text}");
    assert!(text.contains("0 live worker process(es)"), "{text}");
    assert!(
        text.contains("warning: 2 unfinished email.send job(s) in queue mail: no live worker"),
        "{text}"
    );

    let (ok, text) = weir(&["jobs", "--database-url", url, "list", "--queue", "mail"]);
    assert!(ok, "{text}");
    assert_eq!(text.matches("email.send").count(), 2, "{text}");
    assert!(!text.contains("pdf"), "{text}");

    let (ok, text) = weir(&["jobs", "--database-url", url, "show", "1"]);
    assert!(ok, "{text}");
    assert!(text.contains("available since"), "{text}");
    assert!(text.contains(r#"{"to":"a@example.com"}"#), "{text}");
    assert!(
        text.contains("no live worker on queue mail runs kind email.send"),
        "{text}"
    );

    let (ok, text) = weir(&["jobs", "--database-url", url, "cancel", "1"]);
    assert!(ok, "{text}");
    assert!(text.contains("cancelled (it was available)"), "{text}");
    let (ok, text) = weir(&["jobs", "--database-url", url, "cancel", "1"]);
    assert!(!ok, "cancelling twice is refused");
    assert!(text.contains("job 1:"), "{text}");
    let (ok, text) = weir(&["jobs", "--database-url", url, "retry", "1"]);
    assert!(ok, "{text}");
    let state = backend.job(JobId(1)).await.unwrap().unwrap().state_name();
    assert_eq!(state, weir::core::StateName::Available);

    let (ok, text) = weir(&["jobs", "--database-url", url, "list", "--state", "nope"]);
    assert!(!ok);
    assert!(
        text.contains("expected one of scheduled, available"),
        "{text}"
    );
    let (ok, text) = weir(&["jobs", "--database-url", url, "show", "999"]);
    assert!(!ok);
    assert!(text.contains("no job 999"), "{text}");

    let (ok, text) = weir(&["queues", "--database-url", url, "pause", "reports"]);
    assert!(ok, "{text}");
    let (ok, text) = weir(&["queues", "--database-url", url, "--json"]);
    assert!(ok, "{text}");
    let rows: serde_json::Value = serde_json::from_str(&text).unwrap();
    let reports = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == "reports")
        .unwrap();
    assert_eq!(reports["paused"], true);
    assert_eq!(reports["depths"]["available"], 1);

    let (ok, text) = weir(&["workers", "--database-url", url]);
    assert!(ok, "{text}");
    assert!(text.contains("no live worker processes"), "{text}");
}

#[test]
fn a_bad_database_url_is_named() {
    let (ok, text) = weir(&["queues", "--database-url", "mysql://nope"]);
    assert!(!ok);
    assert!(text.contains("invalid database URL"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_on_postgres_and_fences_the_stalled_pool() {
    let db = weir_pg_harness::test_database().await;
    let (ok, text) = weir(&[
        "demo",
        "--database-url",
        db.url_as_app_user(),
        "--jobs",
        "2000",
    ]);
    assert!(ok, "{text}");
    assert!(
        text.contains("completed        2000 of 2000 jobs"),
        "{text}"
    );
    assert!(text.contains("none lost"), "{text}");
    let fenced: u64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("fenced writes"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no fenced figure in {text}"));
    assert!(
        fenced > 0,
        "the stalled pool's late writes are fenced: {text}"
    );
}
