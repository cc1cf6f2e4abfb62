#!/usr/bin/env bash
# Runs every test Weir has: the same command for a new user, a developer and CI.
#
# - the whole Cargo workspace (unit, scenario, property and model-checking
#   tests; the Postgres tests start a throwaway cluster unless DATABASE_URL
#   is set, and fail with install instructions if no Postgres is found);
# - the examples, against Postgres the same way;
# - loom: every interleaving of the memory backend's shared state, with a
#   bounded preemption count (LOOM_MAX_PREEMPTIONS, default 3);
# - the deterministic simulator over a seed range in release (WEIR_SIM_SEEDS
#   seeds × WEIR_SIM_OPS operations, default 200 × 10,000), which must also
#   fire every fault and take every rejection path;
# - the TLA+ specs under correctness/, checked by TLC (installed on demand).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo test --workspace"
cargo test --workspace

echo "== examples (each against a throwaway Postgres unless DATABASE_URL is set)"
for example in quickstart transactional_enqueue cache_warmer external_callback; do
    cargo run -q -p weir-examples --example "$example"
done

echo "== loom: the memory backend's lock and virtual clock, every interleaving"
# Its own target directory: --cfg loom changes every crate's build. No
# default features: the runtime pulls in tokio, which cannot build under loom.
RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}" \
    CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/loom" \
    cargo test -p weir-memory --no-default-features --release --test loom

sim_seeds="${WEIR_SIM_SEEDS:-200}"
sim_ops="${WEIR_SIM_OPS:-10000}"
echo "== simulator: seeds 0..$sim_seeds × $sim_ops operations"
cargo run --release -q -p weir-cli --no-default-features -- simulate \
    --seeds "0..$sim_seeds" --ops "$sim_ops" --check-coverage

if [ -x correctness/run-tlc.sh ]; then
    echo "== TLA+ specs (TLC)"
    correctness/run-tlc.sh
fi
