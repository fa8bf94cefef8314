#!/usr/bin/env bash
# Independent-generator agreement (issue 7): allot-loadtest's p50 against oha's at the same
# fixed rate, on the same server, pinned as in scripts/bench-server.sh (server on CPU
# $SERVER_CPU, generator on CPU $LOAD_CPU), one generator at a time. Both measure latency from
# each request's scheduled send time (oha: -q with --latency-correction), over $CONNECTIONS
# HTTP/1.1 keep-alive connections. oha sends one fixed body; allot-loadtest is told to use one
# unit, so both ask the server the same question. Passes when the p50s are within 20 %.
#
# Needs oha (crates.io): CARGO_INSTALL_ROOT=/work/tools cargo install oha --locked
# Settings (environment): OHA (oha on PATH, else /work/tools/bin/oha), RATE (2000),
# DURATION (10s), CONNECTIONS (4), SERVER_CPU (0), LOAD_CPU (1), PORT_BASE (29000), OUT.
set -euo pipefail
cd "$(dirname "$0")/.."

RATE="${RATE:-2000}"
DURATION="${DURATION:-10s}"
CONNECTIONS="${CONNECTIONS:-4}"
SERVER_CPU="${SERVER_CPU:-0}"
LOAD_CPU="${LOAD_CPU:-1}"
PORT_BASE="${PORT_BASE:-29000}"
OUT="${OUT:-$(mktemp -d)}"
OHA="${OHA:-$(command -v oha || echo /work/tools/bin/oha)}"
[ -x "$OHA" ] || { echo "oha not found (set OHA=...)" >&2; exit 1; }
mkdir -p "$OUT"
http_port=$((PORT_BASE + 16)) grpc_port=$((PORT_BASE + 13)) mgmt_port=$((PORT_BASE + 14))
url="http://127.0.0.1:$http_port/v1/allocate"

echo "== $(date -u +%FT%TZ) $("$OHA" --version); $(uptime)" >&2
cargo build --release --locked -p allot-server -p allot-loadtest --bins
bin=target/release

pin() { local cpu=$1; shift; if command -v taskset >/dev/null 2>&1; then taskset -c "$cpu" "$@"; else "$@"; fi; }

# A simple command in the background, so $! is the server's own pid (taskset execs it).
if command -v taskset >/dev/null 2>&1; then set -- taskset -c "$SERVER_CPU"; else set --; fi
"$@" "$bin/allot-server" --http-addr "127.0.0.1:$http_port" \
  --grpc-addr "127.0.0.1:$grpc_port" --mgmt-addr "127.0.0.1:$mgmt_port" 2>"$OUT/server.log" &
server=$!
trap 'kill $server 2>/dev/null || true; wait 2>/dev/null || true' EXIT
python3 - "http://127.0.0.1:$mgmt_port/readyz" <<'PY'
import sys, time, urllib.request
for _ in range(200):
    try:
        urllib.request.urlopen(sys.argv[1], timeout=0.5); sys.exit(0)
    except Exception:
        time.sleep(0.05)
sys.exit("server not ready")
PY

# The body allot-loadtest sends for its only unit (--units 1 --seed 1): member-0, with the
# attributes of loadtest/src/population.rs (splitmix64 of seed ^ unit * golden ratio).
body=$(python3 - <<'PY'
import json
M = (1 << 64) - 1
def splitmix64(state):
    state = (state + 0x9E3779B97F4A7C15) & M
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
    return z ^ (z >> 31)
seed, unit = 1, 0
bits = splitmix64(seed ^ ((unit * 0x9E3779B97F4A7C15) & M))
country = ["US", "CA", "SE", "NO", "DE", "BR", "JP", "IN"][bits % 8]
platform = ["tv", "web", "ios", "android"][(bits >> 16) % 4]
app_version = ["4.9.0", "5.0.0", "5.2.1", "6.0.0", "7.1.0"][(bits >> 32) % 5]
print(json.dumps({"context": {"targetingKey": f"member-{unit}", "device_id": f"device-{unit}",
                              "country": country, "platform": platform,
                              "app_version": app_version}}, separators=(",", ":")))
PY
)

# Warm both paths up, then measure: oha, ours, oha again (the machine drifts; both oha runs
# are reported).
pin "$LOAD_CPU" "$OHA" -z 2s -q "$RATE" -c "$CONNECTIONS" --no-tui -m POST \
  -H 'content-type: application/json' -d "$body" "$url" > /dev/null
for run in oha-1 ours oha-2; do
  case $run in
    oha-*) pin "$LOAD_CPU" "$OHA" -z "$DURATION" -q "$RATE" -c "$CONNECTIONS" --latency-correction \
             --no-tui --output-format json -m POST -H 'content-type: application/json' -d "$body" \
             "$url" > "$OUT/$run.json" ;;
    ours) pin "$LOAD_CPU" "$bin/allot-loadtest" --url "$url" --rate "$RATE" --duration "$DURATION" \
            --warmup 1s --connections "$CONNECTIONS" --units 1 --seed 1 --json > "$OUT/$run.json" ;;
  esac
  echo "  $run done ($(cut -d, -f1-3 /proc/loadavg))" >&2
done

python3 - "$OUT" "$RATE" <<'PY'
import json, sys
out, rate = sys.argv[1], sys.argv[2]
ours = json.load(open(f"{out}/ours.json"))
p50 = ours["latency_us"]["p50"] / 1000
print(f"rate {rate} req/s; p50 in ms")
print(f"allot-loadtest  p50 {p50:.3f}  p99 {ours['latency_us']['p99'] / 1000:.3f}  errors {ours['errors']}")
ok = True
for run in ("oha-1", "oha-2"):
    o = json.load(open(f"{out}/{run}.json"))
    pct = o["latencyPercentiles"]
    op50, op99 = pct["p50"] * 1000, pct["p99"] * 1000
    ratio = p50 / op50
    ok &= 0.8 <= ratio <= 1.2
    print(f"{run:<15} p50 {op50:.3f}  p99 {op99:.3f}  success rate {o['summary']['successRate']:.4f}  "
          f"ours/oha p50 {ratio:.2f}")
print("within 20 %" if ok else "NOT within 20 %")
sys.exit(0 if ok else 1)
PY
