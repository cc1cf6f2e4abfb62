//! The raw-SQL ceiling: the least a Postgres job queue must do per job,
//! measured on the benchmark's own server in the same run.
//!
//! The statements are those of `../shared/bench/ceiling-schema.sql` and
//! `ceiling-cycle.sql`, copied verbatim next to this file (a clean clone
//! has no `../shared`). [`measure`] runs the cycle from Rust the way
//! `pgbench` runs it (simple query protocol, one round trip per
//! statement, `clients` connections looping for `seconds`); when `pgbench`
//! is on `PATH` the same files also go through it, and both figures are
//! reported. The higher one is the ceiling Weir is judged against.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::{Connection, PgConnection};

use super::db::sql_err;

/// `ceiling-schema.sql`: the minimal job table.
pub const SCHEMA_SQL: &str = include_str!("ceiling-schema.sql");
/// `ceiling-cycle.sql`: one cycle of 128 jobs.
pub const CYCLE_SQL: &str = include_str!("ceiling-cycle.sql");
/// Jobs per cycle.
const CYCLE_JOBS: u64 = 128;

/// One ceiling measurement.
#[derive(Clone, Debug, Serialize)]
pub struct Ceiling {
    /// Concurrent clients.
    pub clients: u32,
    /// How long each ran.
    pub seconds: f64,
    /// Jobs per second through the statements from Rust.
    pub rust_jobs_per_s: f64,
    /// Jobs per second through `pgbench`, when it is installed.
    pub pgbench_jobs_per_s: Option<f64>,
    /// Where in the run it was measured.
    pub when: String,
}

impl Ceiling {
    /// The ceiling to judge against: the higher of the two.
    pub fn jobs_per_s(&self) -> f64 {
        self.rust_jobs_per_s
            .max(self.pgbench_jobs_per_s.unwrap_or(0.0))
    }
}

/// The statements of `sql` in order (comment lines dropped).
fn statements(sql: &str) -> Vec<String> {
    let text: String = sql
        .lines()
        .filter(|line| !line.trim_start().starts_with("--"))
        .map(|line| format!("{line}\n"))
        .collect();
    text.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

async fn reset(url: &str) -> Result<(), String> {
    let mut conn = PgConnection::connect(url).await.map_err(sql_err)?;
    for statement in statements(SCHEMA_SQL) {
        sqlx::raw_sql(&statement)
            .execute(&mut conn)
            .await
            .map_err(sql_err)?;
    }
    let _ = conn.close().await;
    Ok(())
}

async fn drop_table(url: &str) -> Result<(), String> {
    let mut conn = PgConnection::connect(url).await.map_err(sql_err)?;
    sqlx::raw_sql("drop table if exists ceiling_jobs")
        .execute(&mut conn)
        .await
        .map_err(sql_err)?;
    let _ = conn.close().await;
    Ok(())
}

/// One statement in the simple query protocol, as `pgbench` sends it.
/// Boxed, so the spawned clients' futures are `Send` for every lifetime
/// (the unboxed `raw_sql` future trips the compiler's higher-ranked check).
fn exec<'a>(
    conn: &'a mut PgConnection,
    sql: &'a str,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>> {
    Box::pin(async move {
        // No arguments: sqlx sends it as a simple query.
        sqlx::Executor::execute(conn, sql).await.map_err(sql_err)?;
        Ok(())
    })
}

/// The cycle from Rust: `clients` connections for `seconds`.
async fn rust_rate(url: &str, clients: u32, seconds: f64) -> Result<f64, String> {
    reset(url).await?;
    let cycle = Arc::new(statements(CYCLE_SQL));
    let cycles = Arc::new(AtomicU64::new(0));
    let mut conns = Vec::new();
    for _ in 0..clients {
        conns.push(PgConnection::connect(url).await.map_err(sql_err)?);
    }
    let started = Instant::now();
    let stop = started + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for mut conn in conns {
        let (cycle, cycles) = (Arc::clone(&cycle), Arc::clone(&cycles));
        tasks.push(tokio::spawn(async move {
            while Instant::now() < stop {
                for statement in cycle.iter() {
                    exec(&mut conn, statement).await?;
                }
                cycles.fetch_add(1, Ordering::Relaxed);
            }
            let _ = conn.close().await;
            Ok::<(), String>(())
        }));
    }
    for task in tasks {
        task.await
            .map_err(|e| format!("a ceiling client panicked: {e}"))??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    drop_table(url).await?;
    Ok((cycles.load(Ordering::Relaxed) * CYCLE_JOBS) as f64 / elapsed)
}

/// The cycle through `pgbench`, when it is on `PATH`.
async fn pgbench_rate(url: &str, clients: u32, seconds: f64) -> Result<Option<f64>, String> {
    let found = std::process::Command::new("pgbench")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        return Ok(None);
    }
    reset(url).await?;
    let dir = std::env::temp_dir().join(format!("weir-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let file = dir.join("ceiling-cycle.sql");
    std::fs::write(&file, CYCLE_SQL).map_err(|e| e.to_string())?;
    let (target, file) = (url.to_string(), file.clone());
    let secs = seconds.ceil().max(1.0) as u64;
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("pgbench")
            .args(["-n", "-c", &clients.to_string(), "-j", "2"])
            .args(["-T", &secs.to_string(), "-f"])
            .arg(&file)
            .arg(&target)
            .output()
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("running pgbench: {e}"))?;
    let _ = std::fs::remove_dir_all(&dir);
    // Leave no table behind, whatever pgbench did.
    let _ = drop_table(url).await;
    if !output.status.success() {
        return Err(format!(
            "pgbench failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let tps = text
        .lines()
        .find(|l| l.starts_with("tps"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|n| n.parse::<f64>().ok());
    Ok(tps.map(|tps| tps * CYCLE_JOBS as f64))
}

/// Measures the ceiling with `clients` clients for `seconds` each way.
pub async fn measure(url: &str, clients: u32, seconds: f64) -> Result<Ceiling, String> {
    let rust = rust_rate(url, clients, seconds).await?;
    let pgbench = match pgbench_rate(url, clients, seconds).await {
        Ok(rate) => rate,
        Err(error) => {
            eprintln!("weir bench: {error}; reporting the Rust figure only");
            None
        }
    };
    Ok(Ceiling {
        clients,
        seconds,
        rust_jobs_per_s: rust,
        pgbench_jobs_per_s: pgbench,
        when: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cycle_is_seven_statements_as_pgbench_sends_them() {
        let s = statements(CYCLE_SQL);
        assert_eq!(s.len(), 7, "{s:?}");
        assert_eq!(s[0], "begin");
        assert!(s[1].starts_with("insert into ceiling_jobs"));
        assert!(s[4].contains("for update skip locked"));
        assert!(s[6].starts_with("delete from ceiling_jobs"));
        assert_eq!(statements(SCHEMA_SQL).len(), 3);
    }

    #[test]
    fn the_copies_match_the_shared_files_when_they_are_there() {
        // A clean clone has no ../shared; on the development machine the
        // copies must not drift from the reference.
        let shared = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/bench/");
        for (name, copy) in [
            ("ceiling-schema.sql", SCHEMA_SQL),
            ("ceiling-cycle.sql", CYCLE_SQL),
        ] {
            if let Ok(original) = std::fs::read_to_string(format!("{shared}{name}")) {
                assert!(copy.ends_with(&original), "{name} drifted from ../shared");
            }
        }
    }
}
