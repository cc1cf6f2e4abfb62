//! `weir migrate` against a real Postgres (the harness starts one when
//! DATABASE_URL is unset): creates the schema, is a no-op the second time,
//! and gives clear errors for a bad schema name and a database that does not
//! answer.

mod common;
use common::weir;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_creates_the_schema_then_is_a_no_op() {
    let db = weir_pg_harness::test_database().await;
    let url = db.url_as_app_user();
    let (ok, text) = weir(&["migrate", "--database-url", url, "--schema", "weir_cli"]);
    assert!(ok, "{text}");
    assert!(text.contains("migrated from version 0"), "{text}");
    let (ok, text) = weir(&["migrate", "--database-url", url, "--schema", "weir_cli"]);
    assert!(ok, "{text}");
    assert!(text.contains("up to date"), "{text}");
    let (ok, text) = weir(&["migrate", "--database-url", url, "--schema", "bad\"; drop"]);
    assert!(!ok);
    assert!(text.contains("--schema"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_upgrades_a_v1_schema_in_place() {
    let db = weir_pg_harness::test_database().await;
    let schema = weir_postgres::SchemaName::new("weir_old").unwrap();
    let pool = db.app_pool().await;
    weir_postgres::migrate::migrate_to(&pool, &schema, 1)
        .await
        .unwrap();
    let (ok, text) = weir(&[
        "migrate",
        "--database-url",
        db.url_as_app_user(),
        "--schema",
        "weir_old",
    ]);
    assert!(ok, "{text}");
    let latest = weir_postgres::LATEST_VERSION;
    let applied: Vec<i32> = (2..=latest).collect();
    assert!(
        text.contains(&format!(
            "migrated from version 1 to {latest} (applied {applied:?})"
        )),
        "{text}"
    );
    assert_eq!(
        weir_postgres::migrate::schema_version(&pool, &schema)
            .await
            .unwrap(),
        weir_postgres::LATEST_VERSION
    );
}

#[test]
fn a_database_that_does_not_answer_is_a_clear_error() {
    let (ok, text) = weir(&[
        "migrate",
        "--database-url",
        "postgres://weir@127.0.0.1:1/none",
        "--connect-timeout-s",
        "2",
    ]);
    assert!(!ok);
    assert!(
        text.contains("cannot reach the database at 127.0.0.1:1/none within 2 s"),
        "{text}"
    );
    let (ok, text) = weir(&["migrate", "--database-url", "not a url"]);
    assert!(!ok);
    assert!(text.contains("invalid database URL"), "{text}");
}
