//! The conformance suite, instantiated once per backend: every scenario in
//! `weir_tests::scenarios` runs unchanged against the in-memory backend
//! (`weir_memory::MemoryBackend`) and against Postgres.

use sqlx::postgres::PgPoolOptions;
use weir_postgres::harness::{test_database, TestDatabase};
use weir_postgres::{PgBackend, PgConfig};

/// A migrated Postgres backend on a fresh database, as `weir_app`. Keep the
/// [`TestDatabase`] alive for the test: dropping it drops the database.
async fn postgres() -> (TestDatabase, PgBackend) {
    let db = test_database().await;
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(db.url_as_app_user())
        .await
        .expect("connect as weir_app");
    let config = PgConfig {
        world: weir_tests::suite_config(),
        ..PgConfig::default()
    };
    let backend = PgBackend::new(pool, config).expect("valid config");
    backend.migrate().await.expect("migrate");
    (db, backend)
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        /// Every scenario is instantiated below: the list is checked
        /// against `scenarios::ALL`, so a new scenario cannot be forgotten.
        #[test]
        fn every_scenario_is_instantiated() {
            let mut listed = vec![$(stringify!($name)),*];
            let mut all = weir_tests::scenarios::ALL.to_vec();
            listed.sort_unstable();
            all.sort_unstable();
            assert_eq!(listed, all);
        }

        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    let backend = weir_memory::MemoryBackend::new(weir_tests::suite_config());
                    weir_tests::scenarios::$name(&backend).await;
                }
            )*
        }

        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (_db, backend) = super::postgres().await;
                    weir_tests::scenarios::$name(&backend).await;
                }
            )*
        }
    };
}

conformance!(
    claims_follow_priority_then_run_at_then_id,
    a_completion_is_accepted_once,
    late_worker_is_fenced_after_rescue,
    duplicate_unique_key_returns_the_existing_job,
    paused_queue_claims_nothing_until_resumed,
    idle_claimer_slot_is_taken_over,
    failure_retries_after_backoff_then_exhausts,
    snooze_does_not_use_an_attempt,
    cancel_fences_a_running_holder,
    external_wait_resumes_with_the_same_receipt,
    semaphore_slots_are_exclusive_and_a_crashed_session_frees_them,
    a_deposed_leaders_writes_are_refused,
    oversized_batches_are_refused,
    unknown_jobs_are_rejected_per_item,
    bulk_enqueue_returns_ids_in_input_order_beyond_batch_max,
    bulk_enqueue_with_an_invalid_job_writes_nothing,
    bulk_enqueue_with_unique_keys_gives_the_existing_job,
    jobs_are_read_by_id_and_listed_by_every_filter,
    job_listings_are_capped_at_limit_max,
    queues_show_depths_paused_state_and_unfinished_kinds,
    presence_is_announced_refreshed_retired_and_expires,
    enqueue_and_cancel_wake_subscribers,
);
