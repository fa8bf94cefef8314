#!/usr/bin/env bash
# End-to-end tests of allot-server with third-party OpenFeature clients (Python, then Node:
# node/run.sh), and of the SDK tower layer's baggage header with Python OpenTelemetry
# (test_baggage.py).
# Usage: bash e2e/run.sh   (after `cargo build -p allot-server`); extra arguments go to pytest.
# ALLOT_SERVER_BIN overrides the server binary (default: target/debug/allot-server).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
export ALLOT_SERVER_BIN="${ALLOT_SERVER_BIN:-$repo/target/debug/allot-server}"
if [[ ! -x "$ALLOT_SERVER_BIN" ]]; then
    echo "e2e: server binary $ALLOT_SERVER_BIN not found; run cargo build -p allot-server" >&2
    exit 2
fi
# The Rust side of test_baggage.py: the header allot's tower layer sends.
if [[ -z "${ALLOT_PRINT_BAGGAGE_BIN:-}" ]]; then
    (cd "$repo" && cargo build -q -p allot --example print_baggage --features tower)
    export ALLOT_PRINT_BAGGAGE_BIN="$repo/target/debug/examples/print_baggage"
fi
venv="$here/.venv"
if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
(cd "$here" && "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@")
bash "$here/node/run.sh"
