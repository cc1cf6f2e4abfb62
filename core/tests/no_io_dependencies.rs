//! The core must stay pure: its normal dependency tree may not contain an
//! async runtime, a database driver, or anything that does IO for it.

use std::process::Command;

const FORBIDDEN: [&str; 6] = ["tokio", "sqlx", "async-std", "mio", "postgres", "rand"];

#[test]
fn weir_core_depends_on_no_runtime_and_no_driver() {
    let cargo = env!("CARGO");
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let output = Command::new(cargo)
        .args(["tree", "--manifest-path", manifest, "-p", "weir-core"])
        .args(["--edges", "normal", "--prefix", "none", "--format", "{p}"])
        .output()
        .expect("cargo tree runs");
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tree = String::from_utf8(output.stdout).expect("utf-8 output");
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        crates.contains(&"weir-core"),
        "unexpected cargo tree output:\n{tree}"
    );
    assert!(
        crates.contains(&"serde"),
        "the check must see real dependencies:\n{tree}"
    );
    let found: Vec<&&str> = FORBIDDEN.iter().filter(|f| crates.contains(f)).collect();
    assert!(
        found.is_empty(),
        "weir-core must not depend on {found:?}:\n{tree}"
    );
}
