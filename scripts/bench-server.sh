#!/usr/bin/env bash
# The standard server benchmark suite (BENCHMARKS.md, "Server under load").
#
# Builds release binaries, then, in one run and on 127.0.0.1 only:
#   1. allot-server on the embedded demo config, pinned to CPU $SERVER_CPU;
#      allot-loadtest pinned to CPU $LOAD_CPU sends open-loop native HTTP, then gRPC, load;
#   2. allot-hello (a hello-world axum server, the floor) on the same CPU, same HTTP load;
# and prints one table: latency from the scheduled send time, achieved rate, errors, server CPU
# per request, and the ratios to the floor that the targets are stated in. Every run is bounded
# by DURATION; servers are stopped on exit.
#
# Settings (environment): RATE (10000), DURATION (10s), WARMUP (2s), CONNECTIONS (4),
# SERVER_CPU (0), LOAD_CPU (1), PORT_BASE (28000), OUT (a temp dir for the JSON reports).
set -euo pipefail
cd "$(dirname "$0")/.."

RATE="${RATE:-10000}"
DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-2s}"
CONNECTIONS="${CONNECTIONS:-4}"
SERVER_CPU="${SERVER_CPU:-0}"
LOAD_CPU="${LOAD_CPU:-1}"
PORT_BASE="${PORT_BASE:-28000}"
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
http_port=$((PORT_BASE + 16)) grpc_port=$((PORT_BASE + 13)) mgmt_port=$((PORT_BASE + 14))

cargo build --release --locked -p allot-server -p allot-loadtest --bins
bin=target/release

pin() { # pin CPU command...
  local cpu=$1; shift
  if command -v taskset >/dev/null 2>&1; then taskset -c "$cpu" "$@"; else "$@"; fi
}

start() { # start LOG CPU command... : in the background, $! is the server's own pid
  local log=$1 cpu=$2; shift 2
  if command -v taskset >/dev/null 2>&1; then
    exec_in_bg() { exec taskset -c "$cpu" "$@"; }
  else
    exec_in_bg() { exec "$@"; }
  fi
  exec_in_bg "$@" 2>"$log" &
}

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

wait_http() { # wait_http URL: up to 10 s for a 2xx
  python3 - "$1" <<'PY'
import sys, time, urllib.request
for _ in range(200):
    try:
        with urllib.request.urlopen(urllib.request.Request(sys.argv[1], method="GET"), timeout=0.5):
            sys.exit(0)
    except Exception as e:
        if getattr(e, "code", None) == 405:  # the floor only answers POST: it is up
            sys.exit(0)
        time.sleep(0.05)
sys.exit(f"not ready: {sys.argv[1]}")
PY
}

load() { # load NAME PROTOCOL URL PID
  pin "$LOAD_CPU" "$bin/allot-loadtest" --protocol "$2" --url "$3" --rate "$RATE" \
    --duration "$DURATION" --warmup "$WARMUP" --connections "$CONNECTIONS" \
    --server-pid "$4" --json > "$OUT/$1.json"
  echo "  $1 done" >&2
}

echo "== allot-server (CPU $SERVER_CPU), load on CPU $LOAD_CPU: $RATE req/s for $DURATION" >&2
start "$OUT/server.log" "$SERVER_CPU" "$bin/allot-server" --http-addr "127.0.0.1:$http_port" \
  --grpc-addr "127.0.0.1:$grpc_port" --mgmt-addr "127.0.0.1:$mgmt_port"
server=$!
pids+=("$server")
wait_http "http://127.0.0.1:$mgmt_port/readyz"
sleep 1
grep -q allot-server "/proc/$server/cmdline" || { echo "pid $server is not allot-server" >&2; exit 1; }
idle_rss_kb=$(awk '/^VmRSS/ {print $2}' "/proc/$server/status")
load http http "http://127.0.0.1:$http_port" "$server"
load grpc grpc "http://127.0.0.1:$grpc_port" "$server"
kill "$server"; wait "$server" 2>/dev/null || true

echo "== allot-hello floor (CPU $SERVER_CPU)" >&2
start "$OUT/hello.log" "$SERVER_CPU" "$bin/allot-hello" --addr "127.0.0.1:$http_port"
hello=$!
pids+=("$hello")
wait_http "http://127.0.0.1:$http_port/v1/allocate"
load floor http "http://127.0.0.1:$http_port" "$hello"
kill "$hello"; wait "$hello" 2>/dev/null || true

python3 - "$OUT" "$idle_rss_kb" <<'PY'
import json, sys
out, rss = sys.argv[1], int(sys.argv[2])
r = {n: json.load(open(f"{out}/{n}.json")) for n in ("floor", "http", "grpc")}
ms = lambda us: f"{us / 1000:.3f}"
print(f"| run | achieved req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors | server CPU µs/req |")
print("|---|---|---|---|---|---|---|---|---|")
for name, label in (("floor", "hello-world floor (HTTP)"), ("http", "allot native HTTP /v1/allocate"), ("grpc", "allot native gRPC Allocate")):
    x, l = r[name], r[name]["latency_us"]
    cpu = x.get("server_cpu_us_per_request")
    print(f"| {label} | {x['achieved_rate']:.0f} | {ms(l['p50'])} | {ms(l['p90'])} | {ms(l['p99'])} | {ms(l['p99_9'])} | {ms(l['max'])} | {x['errors']} | {cpu:.1f} |" if cpu is not None else f"| {label} | ... |")
f, h, g = r["floor"], r["http"], r["grpc"]
ratio = lambda a, b: a / b if b else float("nan")
print()
print(f"HTTP: CPU/request {ratio(h['server_cpu_us_per_request'], f['server_cpu_us_per_request']):.2f}x the floor (target <= 1.5x); "
      f"p99 {ms(h['latency_us']['p99'])} ms (target < 1 ms); p99.9 {ratio(h['latency_us']['p99_9'], f['latency_us']['p99_9']):.2f}x the floor's (target <= 1.5x)")
print(f"gRPC: CPU/request {ratio(g['server_cpu_us_per_request'], f['server_cpu_us_per_request']):.2f}x the floor (target <= 2x); p99 {ms(g['latency_us']['p99'])} ms (target < 1 ms)")
print(f"Idle RSS of allot-server with the demo config: {rss / 1024:.1f} MiB (target < 30 MB)")
PY
