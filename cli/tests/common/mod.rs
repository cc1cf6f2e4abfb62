//! What the `weir` binary's tests share.

use std::process::Command;
use std::time::{Duration, Instant};

/// Runs `weir` with `args` (never with the caller's `DATABASE_URL`):
/// whether it succeeded, stdout and stderr together, and how long it took.
pub fn weir_timed(args: &[&str]) -> (bool, String, Duration) {
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .env_remove("DATABASE_URL")
        .output()
        .expect("the weir binary runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text, started.elapsed())
}

/// [`weir_timed`] without the time.
#[allow(dead_code)] // not every test file needs both
pub fn weir(args: &[&str]) -> (bool, String) {
    let (ok, text, _) = weir_timed(args);
    (ok, text)
}
