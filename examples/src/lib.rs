//! What the examples share: a database to run against.
//!
//! With `DATABASE_URL` set, the examples use that server (they create the
//! schema they need with `weir migrate`'s code). Without it they start a
//! throwaway Postgres with `weir_pg_harness`, as the tests do, so
//! `cargo run -p weir-examples --example quickstart` works on a machine
//! with the Postgres server binaries and nothing running.

#![forbid(unsafe_code)]

use weir_pg_harness::TestDatabase;

/// A database URL, and the throwaway database behind it (dropped with it).
pub struct Database {
    /// Connect here.
    pub url: String,
    _throwaway: Option<TestDatabase>,
}

/// `DATABASE_URL`, or a fresh database on a throwaway cluster.
pub async fn database() -> Database {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => Database {
            url,
            _throwaway: None,
        },
        _ => {
            let db = weir_pg_harness::test_database().await;
            Database {
                url: db.url_as_app_user().to_string(),
                _throwaway: Some(db),
            }
        }
    }
}

/// Log lines for the examples: `RUST_LOG=weir=debug` shows every transition.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
}
