//! `{schema}.backoff_delay`, the fail batch's restatement of the core's
//! [`Backoff::delay`] for a job with a backoff of its own, gives the core's
//! value for every policy, attempt and draw: edge cases and 20,000
//! generated ones, compared in one statement. The same comparison run on a
//! deliberately broken copy of the function (the exponent off by one, the
//! jitter's bound off by one) finds the difference, so it can fail.

mod common;

use weir_core::{Attempt, Backoff, Millis};
use weir_pg_harness::test_database;

/// The migration that defines the function, as the backend runs it.
const MIGRATION: &str = include_str!("../migrations/0006_retry_policy.sql");

/// A policy, an attempt and a draw.
#[derive(Clone, Copy, Debug)]
struct Case {
    backoff: Backoff,
    attempt: u32,
    draw: u64,
}

/// splitmix64: the cases are the same on every run, with no RNG crate.
struct Draws(u64);

impl Draws {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value spread over magnitudes: a random bit width, then a value of
    /// at most that many bits.
    fn wide(&mut self, max_bits: u32) -> u64 {
        let bits = (self.next() % u64::from(max_bits + 1)) as u32;
        if bits == 0 {
            0
        } else {
            self.next() >> (64 - bits)
        }
    }
}

fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    let edge = |base, factor, cap, jitter| Backoff::new(Millis(base), factor, Millis(cap), jitter);
    let edges = [
        edge(0, 2, 0, 0),
        edge(0, 2, 1_000, 1000),
        edge(1, 1, 1, 1000),
        edge(1_000, 2, 3_600_000, 200),
        edge(1, u32::MAX, i64::MAX as u64, 1000),
        edge(i64::MAX as u64, 3, i64::MAX as u64, 999),
        edge(7, 10, 7_000_000_000_000, 1),
    ];
    for backoff in edges.into_iter().map(|b| b.expect("a valid edge policy")) {
        for attempt in [0, 1, 2, 3, 17, 63, 64, 65, 1000] {
            for draw in [0, 1, 999, u64::MAX / 2, u64::MAX - 1, u64::MAX] {
                out.push(Case {
                    backoff,
                    attempt,
                    draw,
                });
            }
        }
    }
    let mut d = Draws(15);
    while out.len() < 20_000 {
        let base = d.wide(62);
        let cap = base.saturating_add(d.wide(62)).min(i64::MAX as u64);
        let factor = 1 + d.wide(32).min(u64::from(u32::MAX - 1)) as u32;
        let jitter = (d.next() % 1001) as u16;
        let backoff = Backoff::new(Millis(base), factor, Millis(cap), jitter).expect("valid");
        out.push(Case {
            backoff,
            attempt: (d.next() % 1001) as u32,
            draw: d.next(),
        });
    }
    out
}

/// The cases where `function` (a schema-qualified name) disagrees with
/// [`Backoff::delay`], with what it answered.
async fn disagreements(pool: &sqlx::PgPool, function: &str, cases: &[Case]) -> Vec<(Case, i64)> {
    let column = |f: fn(&Case) -> i64| cases.iter().map(f).collect::<Vec<i64>>();
    let sql = format!(
        "SELECT {function}(base, factor, cap, jitter::integer, attempt::integer, draw::numeric)
         FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[],
                     $6::text[]) WITH ORDINALITY AS c(base, factor, cap, jitter, attempt, draw, n)
         ORDER BY n"
    );
    let answers: Vec<i64> = sqlx::query_scalar(&sql)
        .bind(column(|c| c.backoff.base().0 as i64))
        .bind(column(|c| i64::from(c.backoff.factor())))
        .bind(column(|c| c.backoff.cap().0 as i64))
        .bind(column(|c| i64::from(c.backoff.jitter_permille())))
        .bind(column(|c| i64::from(c.attempt)))
        .bind(cases.iter().map(|c| c.draw.to_string()).collect::<Vec<_>>())
        .fetch_all(pool)
        .await
        .expect("the function answers every case");
    assert_eq!(answers.len(), cases.len());
    cases
        .iter()
        .zip(answers)
        .filter(|(c, sql)| c.backoff.delay(Attempt(c.attempt), c.draw).0 as i64 != *sql)
        .map(|(c, sql)| (*c, sql))
        .collect()
}

/// The function's `CREATE` statement from the migration, for `schema`.
fn function_sql(schema: &str) -> String {
    let start = MIGRATION
        .find("CREATE FUNCTION {schema}.backoff_delay")
        .expect("the migration defines backoff_delay");
    let end = MIGRATION[start..].find("END $$;").expect("and ends it") + start + "END $$;".len();
    MIGRATION[start..end].replace("{schema}", schema)
}

#[tokio::test]
async fn the_sql_backoff_delay_is_the_cores() {
    let (_db, backend) = common::backend(weir_core::WorldConfig::default()).await;
    let cases = cases();
    let wrong = disagreements(backend.pool(), "weir.backoff_delay", &cases).await;
    assert!(
        wrong.is_empty(),
        "{} of {} cases differ from Backoff::delay, first: {:?}",
        wrong.len(),
        cases.len(),
        wrong.first()
    );
}

#[tokio::test]
async fn the_comparison_catches_a_broken_restatement() {
    let db = test_database().await;
    let pool = db.pool().await;
    sqlx::raw_sql("CREATE SCHEMA broken")
        .execute(&pool)
        .await
        .expect("a scratch schema");
    let real = function_sql("broken");
    let brokens = [
        (
            "exponent off by one",
            "greatest(attempt - 1, 0)",
            "greatest(attempt, 0)",
        ),
        (
            "jitter bound off by one",
            "mod(draw, max_cut + 1)",
            "mod(draw, max_cut)",
        ),
    ];
    let cases = cases();
    for (name, right, wrong) in brokens {
        assert!(
            real.contains(right),
            "{name}: the fragment is in the function"
        );
        sqlx::raw_sql(
            &real
                .replace(right, wrong)
                .replace("CREATE", "CREATE OR REPLACE"),
        )
        .execute(&pool)
        .await
        .expect("the broken copy is created");
        let found = disagreements(&pool, "broken.backoff_delay", &cases).await;
        assert!(
            !found.is_empty(),
            "{name}: the comparison must find the broken copy"
        );
    }
}
