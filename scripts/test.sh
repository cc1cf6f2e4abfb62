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
# - the TLA+ specs under correctness/, checked by TLC (installed on demand);
# - trace validation: simulator runs, replayed through the core, checked by
#   TLC as behaviours of correctness/Lifecycle.tla (correctness/trace-validate.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo test --workspace"
cargo test --workspace

echo "== examples (each against a throwaway Postgres unless DATABASE_URL is set) (at ${SECONDS}s)"
# The binaries `cargo test --workspace` just built: `cargo run -p
# weir-examples` would build them again with that package's features only
# (another copy of sqlx and the backends, minutes in CI).
built=$(cargo test --workspace --no-run --message-format=json 2>/dev/null)
for example in quickstart transactional_enqueue cache_warmer external_callback retry_policy; do
    binary=$(printf '%s\n' "$built" | python3 -c '
import json, sys
name = sys.argv[1]
for line in sys.stdin:
    m = json.loads(line)
    if (m.get("reason") == "compiler-artifact" and m["target"]["name"] == name
            and "example" in m["target"]["kind"] and m.get("executable")):
        print(m["executable"])
' "$example")
    if [ -z "$binary" ]; then
        echo "example $example was not built by cargo test --workspace" >&2
        exit 1
    fi
    "$binary"
done

echo "== loom: the memory backend's lock and virtual clock, every interleaving (at ${SECONDS}s)"
# Its own target directory: --cfg loom changes every crate's build. No
# default features: the runtime pulls in tokio, which cannot build under loom.
RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}" \
    CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/loom" \
    cargo test -p weir-memory --no-default-features --release --test loom

sim_seeds="${WEIR_SIM_SEEDS:-200}"
sim_ops="${WEIR_SIM_OPS:-10000}"
echo "== simulator: seeds 0..$sim_seeds × $sim_ops operations (at ${SECONDS}s)"
cargo run --release -q -p weir-cli --no-default-features -- simulate \
    --seeds "0..$sim_seeds" --ops "$sim_ops" --check-coverage

if [ -x correctness/run-tlc.sh ]; then
    echo "== TLA+ specs (TLC) (at ${SECONDS}s)"
    correctness/run-tlc.sh
fi

if [ -x correctness/trace-validate.sh ]; then
    echo "== TLA+ trace validation: simulator runs as Lifecycle.tla behaviours (at ${SECONDS}s)"
    # The exporter is the tla_trace test `cargo test --workspace` built above.
    exporter=$(printf '%s\n' "$built" | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if (m.get("reason") == "compiler-artifact" and m["target"]["name"] == "tla_trace"
            and m.get("executable")):
        print(m["executable"])
')
    WEIR_TLA_TRACE_EXPORTER="$exporter" correctness/trace-validate.sh
fi
