//! `weir bench all --quick` runs end to end against a throwaway Postgres it
//! starts itself, and writes its JSON lines and its Markdown table. Its
//! figures are not checked: a benchmark is never a timed test (and this is
//! a debug build).

use std::process::Command;

/// About 20-60 s on two cores, so not part of every `cargo test`: `.ci/run`
/// runs it as its own stage (`cargo test --workspace --features
/// weir-cli/bench --test bench -- --ignored`, which reuses the workspace's
/// build). Only built with the `bench` feature (`required-features`).
#[test]
#[ignore = "the bench smoke run: cargo test -p weir-cli --features bench --test bench -- --ignored"]
fn bench_all_quick_runs_end_to_end_and_writes_its_files() {
    let out = std::env::temp_dir().join(format!("weir-bench-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let output = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args([
            "bench",
            "all",
            "--quick",
            "--ceiling-seconds",
            "1",
            "--seconds",
            "2",
        ])
        .arg("--out")
        .arg(&out)
        // Its own throwaway server, whatever the test environment points at.
        .env_remove("DATABASE_URL")
        .output()
        .expect("the weir binary runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{text}");

    let jsonl = std::fs::read_to_string(out.join("results.jsonl")).expect("results.jsonl");
    let shapes: Vec<String> = jsonl
        .lines()
        .map(|line| {
            let record: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            assert_eq!(record["quick"], true, "{line}");
            assert!(record["postgres"]["version"].is_string(), "{line}");
            assert!(
                record["postgres"]["settings"]["fsync"].is_string(),
                "{line}"
            );
            assert!(record["cores"].as_u64().unwrap_or(0) >= 1, "{line}");
            assert!(!record["targets"].as_array().expect("targets").is_empty());
            record["shape"].as_str().expect("a shape").to_string()
        })
        .collect();
    for shape in [
        "core",
        "burn-down 1 x 64",
        "burn-down 2 x 32",
        "cost",
        "offered 1 x 64",
        "offered 2 x 32",
        "enqueue",
        "herd",
    ] {
        assert!(
            shapes.iter().any(|s| s == shape),
            "{shape} missing: {shapes:?}"
        );
    }
    // Every record carries the ceiling measured in this run, from Rust
    // at least (pgbench when installed).
    let burn: serde_json::Value = jsonl
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["shape"] == "burn-down 1 x 64")
        .unwrap();
    let ceilings = burn["ceiling"].as_array().expect("ceilings");
    assert!(ceilings.iter().any(|c| c["clients"] == 4), "{ceilings:?}");
    assert!(ceilings
        .iter()
        .all(|c| c["rust_jobs_per_s"].as_f64().unwrap() > 0.0));

    let md = std::fs::read_to_string(out.join("latest.md")).expect("latest.md");
    assert!(
        md.contains("| shape | figure | target | measured | |"),
        "{md}"
    );
    assert!(md.contains("raw-SQL ceiling, 4 clients"), "{md}");
    for shape in ["burn-down 2 x 32", "cost", "offered 2 x 32", "herd", "core"] {
        assert!(
            md.contains(&format!("| {shape} |")),
            "{shape} missing:\n{md}"
        );
    }
    let _ = std::fs::remove_dir_all(&out);
}
