//! `weir migrate`: bring a database's Weir schema to this code's version.

use std::time::Duration;

use clap::Args;
use weir_postgres::{migrate, SchemaName};

/// Options of `weir migrate`.
#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// The database, e.g. postgres://user:pass@host/db (or DATABASE_URL).
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// The schema Weir's tables live in.
    #[arg(long, default_value = "weir")]
    schema: String,
    /// How long to wait for a connection (at least 1 s).
    #[arg(long, default_value_t = crate::pg::CONNECT_TIMEOUT.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    connect_timeout_s: u64,
}

/// Runs the migration and prints what it did.
pub fn run(args: &MigrateArgs) -> Result<(), String> {
    let schema = SchemaName::new(args.schema.clone()).map_err(|e| format!("--schema: {e}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async {
        let timeout = Duration::from_secs(args.connect_timeout_s);
        let pool = crate::pg::pool(&args.database_url, 1, timeout).await?;
        let report = migrate(&pool, &schema).await.map_err(|e| e.to_string())?;
        if report.applied.is_empty() {
            println!(
                "schema {} is up to date at version {}",
                schema.as_str(),
                report.to
            );
        } else {
            println!(
                "schema {} migrated from version {} to {} (applied {:?})",
                schema.as_str(),
                report.from,
                report.to,
                report.applied
            );
        }
        Ok(())
    })
}
