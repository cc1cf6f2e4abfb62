#!/usr/bin/env bash
# Runs every test Weir has: the same command for a new user, a developer and CI.
#
# - the whole Cargo workspace (unit, scenario, property and model-checking
#   tests; the Postgres tests start a throwaway cluster unless DATABASE_URL
#   is set, and fail with install instructions if no Postgres is found);
# - the TLA+ specs under correctness/, checked by TLC (installed on demand).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo test --workspace"
cargo test --workspace

if [ -x correctness/run-tlc.sh ]; then
    echo "== TLA+ specs (TLC)"
    correctness/run-tlc.sh
fi
