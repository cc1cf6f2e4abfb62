#!/usr/bin/env bash
# Before/after figures from one session: runs `weir bench cost` (a
# burn-down with its cost per job, and the raw-SQL ceiling of that same
# invocation) with each given binary in turn, ROUNDS times round-robin, so
# every variant sees the same machine load in alternation, then prints the
# median of each figure per variant.
#
# Usage: scripts/bench-ab.sh ROUNDS NAME=BINARY [NAME=BINARY ...] [-- BENCH ARGS]
# e.g.   scripts/bench-ab.sh 3 before=/tmp/weir-before after=target/release/weir
# Binaries must have `weir bench` (build each variant with
# `cargo build --release -p weir-cli --features bench` and copy
# target/release/weir away).
set -euo pipefail
rounds=${1:?usage: bench-ab.sh ROUNDS NAME=BINARY ... [-- BENCH ARGS]}
shift
variants=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do variants+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
extra=("$@")
out=$(mktemp -d)
for round in $(seq 1 "$rounds"); do
    for v in "${variants[@]}"; do
        name=${v%%=*}; bin=${v#*=}
        echo "round $round: $name" >&2
        "$bin" bench cost --out "$out/$name" "${extra[@]}" >/dev/null 2>&1
    done
done
python3 - "$out" "${variants[@]}" <<'PY'
import json, os, statistics, sys
out, variants = sys.argv[1], sys.argv[2:]
print("| variant | runs | jobs/s | ceiling (judged) | ratio | WAL B/job | commits/job | row writes/job |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for v in variants:
    name = v.split("=", 1)[0]
    rows = [json.loads(l) for l in open(os.path.join(out, name, "results.jsonl"))]
    rows = [r for r in rows if r["shape"] == "cost"]
    def med(f): return statistics.median(f(r) for r in rows)
    rate = lambda r: r["figures"]["params"]["jobs"] / r["figures"]["drain_seconds"]
    ceil = lambda r: r["figures"]["ceiling"]["judged_against_jobs_per_s"]
    pj = lambda k: (lambda r: r["figures"]["per_job"][k])
    print(f"| {name} | {len(rows)} | {med(rate):,.0f} | {med(ceil):,.0f} | "
          f"{med(lambda r: rate(r) / ceil(r)):.2f} | {med(pj('wal_bytes_per_job')):.0f} | "
          f"{med(pj('commits_per_job')):.4f} | {med(pj('row_writes_per_job')):.2f} |")
PY
echo "(raw results: $out)" >&2
