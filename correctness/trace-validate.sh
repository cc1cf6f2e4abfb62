#!/usr/bin/env bash
# Trace validation: simulator runs, replayed through the core, checked by
# TLC as behaviours of Lifecycle.tla (LifecycleTrace.tla; see README.md,
# "Trace validation").
#
# Usage: correctness/trace-validate.sh [SEEDS]
#   SEEDS  A..B, the simulator seeds to trace (default 0..8)
#
# 1. The ignored test `export_lifecycle_traces` (model-check/tests/tla_trace.rs)
#    writes one LifecycleTraceData.tla per seed, two traces that must be
#    rejected (a tampered epoch; a core with a deliberate mistake) and a
#    manifest (directory, expected result, events, replay command).
# 2. TLC checks each beside a copy of the specs:
#      pass           -> no error, and one distinct state per event (+1);
#      TraceAccepted  -> TLC must report TraceAccepted violated (exit 12).
#    A divergence prints the event TLC could not take and the command that
#    replays the run.
#
# Environment:
#   WEIR_TLA_TRACE_EXPORTER  the built tla_trace test binary (scripts/test.sh
#                            passes the one `cargo test --workspace` built);
#                            otherwise it is built with cargo
#   TLA2TOOLS_JAR, KEEP_LOGS=1  as for run-tlc.sh
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SEEDS="${1:-0..8}"

die() { echo "trace-validate.sh: $*" >&2; exit 2; }
command -v java >/dev/null 2>&1 || die "java not found (TLC needs Java 11+)"
JAR="$("$HERE/tlc-jar.sh")" || die "tla2tools.jar not found"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/weir-trace.XXXXXX")"
cleanup() {
    if [ "${KEEP_LOGS:-0}" = "1" ]; then
        echo "traces and TLC logs kept in $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

total_start=$(date +%s%N)

# --- 1. export ---------------------------------------------------------------
exporter="${WEIR_TLA_TRACE_EXPORTER:-}"
if [ -z "$exporter" ]; then
    exporter=$(cd "$HERE/.." && cargo test -q -p weir-model-check --test tla_trace --no-run \
        --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if (m.get("reason") == "compiler-artifact" and m["target"]["name"] == "tla_trace"
            and m.get("executable")):
        print(m["executable"])
')
fi
[ -n "$exporter" ] && [ -x "$exporter" ] || die "the tla_trace test binary was not built"
mkdir -p "$WORK/traces"
if ! (cd "$HERE/.." && WEIR_TLA_TRACE_DIR="$WORK/traces" WEIR_TLA_TRACE_SEEDS="$SEEDS" \
        "$exporter" --ignored --exact export_lifecycle_traces) > "$WORK/export.log" 2>&1; then
    cat "$WORK/export.log" >&2
    die "exporting the traces failed"
fi
export_secs=$(awk -v a="$total_start" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')

# --- 2. TLC on each trace, two at a time ------------------------------------
# One worker each: a trace has one state per event, nothing to share out.
# -difftrace: a rejected trace's counterexample is the whole run so far;
# print only what each step changed.
JOBS="${TRACE_TLC_JOBS:-2}"
check() {
    local run="$1"
    cp "$HERE/Lifecycle.tla" "$HERE/LifecycleTrace.tla" "$HERE/LifecycleTrace.cfg" "$run/"
    mkdir -p "$run/meta" "$run/tmp"
    local start rc
    start=$(date +%s%N)
    set +e
    (cd "$run" && java -XX:+UseParallelGC -Djava.io.tmpdir="$run/tmp" -cp "$JAR" \
        tlc2.TLC -workers 1 -difftrace -config LifecycleTrace.cfg -metadir "$run/meta" \
        LifecycleTrace.tla) > "$run/tlc.log" 2>&1
    rc=$?
    set -e
    echo "$rc $(awk -v a="$start" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')" > "$run/rc"
}
running=0
while IFS=$'\t' read -r name _; do
    if [ "$running" -ge "$JOBS" ]; then wait -n; running=$((running - 1)); fi
    check "$WORK/traces/$name" &
    running=$((running + 1))
done < "$WORK/traces/manifest.tsv"
wait

printf '%-46s %-14s %-14s %7s %9s %8s  %s\n' trace expected result events distinct seconds status
printf '%s\n' "$(printf '%.0s-' {1..112})"
failures=0
rows=0
while IFS=$'\t' read -r name expected events replay; do
    rows=$((rows + 1))
    run="$WORK/traces/$name"
    log="$run/tlc.log"
    read -r rc secs < "$run/rc"
    distinct=$(grep -Eo '[0-9]+ distinct states found' "$log" | tail -n 1 | awk '{print $1}' || true)
    [ -n "$distinct" ] || distinct="-"

    if [ "$rc" -eq 0 ] && grep -q 'Model checking completed. No error has been found.' "$log"; then
        result="pass"
    elif named=$(grep -Eo '(Invariant|Action property) [A-Za-z0-9_]+ is violated' "$log" | head -n 1) \
            && [ -n "$named" ]; then
        result=$(echo "$named" | awk '{print $(NF-2)}')
    else
        result="error(rc=$rc)"
    fi

    ok=0
    if [ "$expected" = "pass" ]; then
        # Accepted means every event was taken, one state each.
        [ "$result" = "pass" ] && [ "$distinct" = "$((events + 1))" ] && ok=1
    elif [ "$result" = "$expected" ] && [ "$rc" -eq 12 ]; then
        ok=1
    fi
    if [ "$ok" -eq 1 ]; then status="ok"; else status="MISMATCH"; failures=$((failures + 1)); fi
    printf '%-46s %-14s %-14s %7s %9s %8s  %s\n' "$name" "$expected" "$result" "$events" "$distinct" "$secs" "$status"
    # Where TLC got stuck: the event it could not take, and the spec's view.
    divergence=$(sed -n '/trace diverges at event/,/^Error:/p' "$log" | grep -v '^Error:' \
        | tr -s ' \n' ' ' | cut -c1-600 || true)
    [ -z "$divergence" ] || echo "    TLC: $divergence"
    if [ "$ok" -ne 1 ]; then
        echo "    replay: $replay"
        { grep -m 3 '^Error:' "$log" || true; } | sed 's/^/    /'
        KEEP_LOGS=1
    fi
done < "$WORK/traces/manifest.tsv"

total=$(awk -v a="$total_start" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')
printf '%s\n' "$(printf '%.0s-' {1..112})"
echo "$rows traces (seeds $SEEDS), $failures mismatches, ${total}s total (${export_secs}s exporting; TLC: $JAR)"
[ "$rows" -gt 0 ] || die "no traces were exported"
[ "$failures" -eq 0 ] || exit 1
