//! The conformance suite, instantiated once per backend: every scenario in
//! `weir_tests::scenarios` runs unchanged against the in-memory backend
//! (`weir_memory::MemoryBackend`) and against Postgres.
//!
//! Two guards keep the suite whole: `every_scenario_is_instantiated` (no
//! scenario is left out of the list below) and
//! `every_command_is_exercised_by_the_suite` (no `Command` variant is left
//! out of the scenarios).

use sqlx::postgres::PgPoolOptions;
use weir_pg_harness::{test_database, TestDatabase};
use weir_postgres::{PgBackend, PgConfig, SqlMutation};
use weir_tests::recording::{Recording, SuiteCoverage};

/// A migrated Postgres backend on a fresh database, as `weir_app`. Keep the
/// [`TestDatabase`] alive for the test: dropping it drops the database.
async fn postgres() -> (TestDatabase, PgBackend) {
    postgres_with(None).await
}

/// [`postgres`], with one fragment of its SQL deliberately broken.
async fn postgres_with(mutation: Option<SqlMutation>) -> (TestDatabase, PgBackend) {
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
    let backend = match mutation {
        None => PgBackend::new(pool, config),
        Some(mutation) => PgBackend::mutated(pool, config, mutation),
    }
    .expect("valid config");
    backend.migrate().await.expect("migrate");
    (db, backend)
}

/// A fresh memory backend that notes every command it executes.
fn memory_recording() -> Recording<weir_memory::MemoryBackend> {
    Recording::new(weir_memory::MemoryBackend::new(weir_tests::suite_config()))
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

        /// Every `Command` variant (as serde lists them, not a copy kept by
        /// hand) is executed by some scenario, so no command can reach a
        /// backend that the suite never sent it.
        ///
        /// The scenarios run here on memory backends behind a `Recording`
        /// that notes each command's variant. That is coverage on both
        /// backends: every scenario runs unchanged on each, and each
        /// Postgres instantiation below also records its commands and
        /// checks they are the ones the same scenario sends the memory
        /// backend. The guard can fail: for each scenario that alone
        /// executes some variant, it shows the verdict without it.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn every_command_is_exercised_by_the_suite() {
            let mut runs = tokio::task::JoinSet::new();
            $(
                runs.spawn(async {
                    let backend = memory_recording();
                    weir_tests::scenarios::$name(&backend).await;
                    (stringify!($name), backend.tally())
                });
            )*
            let mut coverage = SuiteCoverage::new();
            while let Some(run) = runs.join_next().await {
                let (name, tally) = run.expect("every scenario passes on the memory backend");
                coverage.add(name, tally);
            }
            eprintln!("commands executed: {}", coverage.total());
            coverage.complete().unwrap_or_else(|missing| panic!("{missing}"));
            for (scenario, alone) in coverage.sole_exercisers() {
                let without = coverage.total_without(Some(scenario));
                let verdict = without
                    .complete("the conformance suite never executed")
                    .expect_err("a variant only this scenario executes is missing without it");
                let named = verdict.lines().next().unwrap_or_default();
                assert_eq!(
                    named,
                    format!("the conformance suite never executed: {}", alone.join(", "))
                );
                eprintln!("without {scenario}: {named}");
            }
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
                /// Also checks that Postgres was sent the very commands the
                /// memory backend is sent by this scenario, so the memory
                /// run's coverage is Postgres's too.
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (_db, backend) = super::postgres().await;
                    let postgres = super::Recording::new(backend);
                    let memory = super::memory_recording();
                    tokio::join!(
                        weir_tests::scenarios::$name(&postgres),
                        weir_tests::scenarios::$name(&memory),
                    );
                    assert_eq!(
                        postgres.executed(),
                        memory.executed(),
                        "the scenario sent Postgres other commands than the memory backend"
                    );
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
    a_cancelled_attempt_is_fenced_and_final,
    a_released_claimer_slot_is_taken_over_at_once,
    a_renewed_slot_lease_outlives_its_first_ttl,
    prune_deletes_only_jobs_finished_long_enough_ago,
    an_expired_external_wait_is_retried_and_its_late_callback_fenced,
    a_snoozed_job_waits_out_its_delay,
    a_jobs_own_backoff_sets_its_delay_and_its_newest_errors_are_kept,
);

/// The retry-policy scenario can fail on Postgres: with either of the fail
/// batch's restatements of the core broken — the job's own backoff
/// ignored, or the error history left unbounded — it panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_policy_scenario_catches_broken_fail_sql() {
    for (mutation, assertion) in [
        (SqlMutation::FailIgnoresOwnBackoff, "the job's own backoff"),
        (SqlMutation::FailKeepsEveryError, "the newest, oldest first"),
    ] {
        let (db, backend) = postgres_with(Some(mutation)).await;
        let run = tokio::spawn(async move {
            let _db = db;
            weir_tests::scenarios::a_jobs_own_backoff_sets_its_delay_and_its_newest_errors_are_kept(
                &backend,
            )
            .await;
        });
        let panic = match run.await {
            Err(e) if e.is_panic() => e.into_panic(),
            other => panic!("{mutation:?} went unnoticed: {other:?}"),
        };
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        assert!(
            message.contains(assertion),
            "{mutation:?} was caught by another check than expected: {message}"
        );
        eprintln!("{mutation:?}: caught by the scenario: {assertion}");
    }
}
