//! `history_client`: one client of a concurrent history in a process of
//! its own.
//!
//! `tests/histories.rs` spawns it with a [`ClientSpec`] as JSON in
//! `WEIR_HISTORY_CLIENT`; it connects as the application's role, runs the
//! client ([`run_client`], the same code the recorder's in-process clients
//! run) and prints what it sent and got back as one JSON array of
//! [`weir_tests::history_client::Sent`] on standard output.

use std::process::ExitCode;

use weir_postgres::PgBackend;
use weir_tests::history_client::{connect, pg_config, run_client, Client, ClientSpec, Shared};

async fn run() -> Result<(), String> {
    let spec = std::env::var("WEIR_HISTORY_CLIENT")
        .map_err(|_| "WEIR_HISTORY_CLIENT is not set: tests/histories.rs runs this".to_string())?;
    let spec: ClientSpec =
        serde_json::from_str(&spec).map_err(|e| format!("WEIR_HISTORY_CLIENT: {e}"))?;
    let pool = connect(&spec.url, spec.client).await;
    let backend = PgBackend::new(pool.clone(), pg_config(spec.mix)).map_err(|e| e.to_string())?;
    let shared = Shared::new(spec.clock);
    let mut client = Client::new(spec.seed, spec.client, spec.history, spec.mix);
    let sent = run_client(&backend, &mut client, &shared).await;
    pool.close().await;
    println!(
        "{}",
        serde_json::to_string(&sent).map_err(|e| e.to_string())?
    );
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("history_client: {error}");
            ExitCode::FAILURE
        }
    }
}
