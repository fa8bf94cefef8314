#!/usr/bin/env bash
# Node end-to-end tests of allot-server with the OpenFeature server SDK and its OFREP and
# flagd (RPC) providers, pinned by package-lock.json; run by e2e/run.sh after the Python ones.
# Usage: bash e2e/node/run.sh   (after `cargo build -p allot-server`)
# ALLOT_SERVER_BIN overrides the server binary (default: target/debug/allot-server).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
export ALLOT_SERVER_BIN="${ALLOT_SERVER_BIN:-$repo/target/debug/allot-server}"
if [[ ! -x "$ALLOT_SERVER_BIN" ]]; then
    echo "e2e/node: server binary $ALLOT_SERVER_BIN not found; run cargo build -p allot-server" >&2
    exit 2
fi
cd "$here"
npm ci --no-audit --no-fund --loglevel=error
exec npm test --silent
