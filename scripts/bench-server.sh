#!/usr/bin/env bash
# The standard server benchmark suite (BENCHMARKS.md, "Server under load").
#
# Builds release binaries, then, in one run and on 127.0.0.1 only, with every server pinned to
# CPU $SERVER_CPU and allot-loadtest pinned to CPU $LOAD_CPU (open loop, latency from each
# request's scheduled send time):
#   1. allot-server on the embedded demo config: native HTTP (HTTP/1.1, then HTTP/2), OFREP
#      single flag, OFREP bulk, gRPC Allocate, flagd ResolveBoolean and ResolveAll; then native
#      HTTP again while the config is swapped every $SWAP_EVERY through the admin port;
#   2. the same server with the assignment log on (a file in $OUT): native HTTP;
#   3. allot-server on a generated 10,000-experiment config: idle RSS only;
#   4. allot-server on a generated 100-flag config: OFREP bulk at $BULK_RATE, and at peak
#      (closed loop, `--max`);
#   5. allot-hello (a hello-world axum server, the floor): native HTTP (at $RATE, at
#      $BULK_RATE for the 100-flag bulk row, and at peak: CPU per request falls as the rate
#      rises, so each row needs a floor at its own rate); and its gRPC floor (a tonic
#      `Allocate` answering `{revision: 1}`), which shows what tonic and HTTP/2 alone cost;
# and prints one table (latency, achieved rate, errors, shed, server CPU per request) followed
# by each target of issue 7 with its measured value. Every run is bounded by WARMUP + DURATION;
# servers are stopped on exit. `uptime` is printed before and after.
#
# With `pairs` (in the default RUNS), native HTTP is also measured $PAIR_ROUNDS times interleaved
# with the swap and assignment-log runs ($PAIR_DURATION each; the log on a fresh server each
# round). With `grpc-pairs` (also default), gRPC `Allocate` and the tonic floor alternate the
# same way. When they ran, the p99 targets (HTTP and gRPC p99 < 1 ms, swaps within 1.2×, log
# within 1.1×) are judged on the medians of the rounds, and the single runs' p99 rows are shown
# as diagnostics: this VM moves one 10 s run's p99 by 2-3× from one minute to the next.
#
# Settings (environment): RATE (10000), BULK_RATE (5000), DURATION (10s), WARMUP (2s),
# CONNECTIONS (4), SWAP_EVERY (100ms), SERVER_CPU (0), LOAD_CPU (1), PORT_BASE (28000),
# OUT (a temp dir for the JSON reports, logs and generated configs), CARGO_TARGET_DIR (target),
# PAIR_ROUNDS (5), PAIR_DURATION (5s),
# RUNS (every run; or a space-separated subset of the table's run names, e.g.
# RUNS="floor grpc flagd flagd-all" for the gRPC rows and their floor: only those are measured,
# and only the targets they decide are printed).
set -euo pipefail
cd "$(dirname "$0")/.."

RATE="${RATE:-10000}"
BULK_RATE="${BULK_RATE:-5000}"
DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-2s}"
CONNECTIONS="${CONNECTIONS:-4}"
SWAP_EVERY="${SWAP_EVERY:-100ms}"
SERVER_CPU="${SERVER_CPU:-0}"
LOAD_CPU="${LOAD_CPU:-1}"
PORT_BASE="${PORT_BASE:-28000}"
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
http_port=$((PORT_BASE + 16)) grpc_port=$((PORT_BASE + 13)) mgmt_port=$((PORT_BASE + 14))
token="bench-$$-$RANDOM"

echo "== $(date -u +%FT%TZ) $(nproc) CPUs; $(uptime)" >&2
cargo build --release --locked -p allot-server -p allot-loadtest --bins
bin="${CARGO_TARGET_DIR:-target}/release"
RUNS="${RUNS:-floor floor-h2 floor-grpc floor-bulk floor-max http http2 ofrep ofrep-bulk bulk100 bulk100-max grpc flagd flagd-all swap log pairs grpc-pairs}"
PAIR_ROUNDS="${PAIR_ROUNDS:-5}"
PAIR_DURATION="${PAIR_DURATION:-5s}"
want() { [[ " $RUNS " == *" $1 "* ]]; }

pin() { # pin CPU command...
  local cpu=$1; shift
  if command -v taskset >/dev/null 2>&1; then taskset -c "$cpu" "$@"; else "$@"; fi
}

bg() { # bg LOG CPU command...: starts pinned in the background; $! is the command's own pid
  local log=$1 cpu=$2; shift 2
  if command -v taskset >/dev/null 2>&1; then set -- taskset -c "$cpu" "$@"; fi
  "$@" 2>"$log" &
}

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

wait_http() { # wait_http URL: up to 30 s for a 2xx (a 10,000-experiment config compiles first)
  python3 - "$1" <<'PY'
import sys, time, urllib.request
for _ in range(600):
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

server=""
start_server() { # start_server NAME [allot-server flags...]: sets $server; waits for /readyz
  local name=$1; shift
  bg "$OUT/$name.log" "$SERVER_CPU" "$bin/allot-server" --http-addr "127.0.0.1:$http_port" \
    --grpc-addr "127.0.0.1:$grpc_port" --mgmt-addr "127.0.0.1:$mgmt_port" \
    --admin-token "$token" "$@"
  server=$!
  pids+=("$server")
  wait_http "http://127.0.0.1:$mgmt_port/readyz"
  sleep 1
  grep -q allot-server "/proc/$server/cmdline" || { echo "pid $server is not allot-server" >&2; exit 1; }
}

stop_server() { kill "$server"; wait "$server" 2>/dev/null || true; }

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

load() { # load NAME PROTOCOL PORT PID [allot-loadtest flags...]; skipped unless in $RUNS
  local name=$1 protocol=$2 port=$3 pid=$4; shift 4
  want "$name" || return 0
  pin "$LOAD_CPU" "$bin/allot-loadtest" --protocol "$protocol" --url "http://127.0.0.1:$port" \
    --rate "$RATE" --duration "$DURATION" --warmup "$WARMUP" --connections "$CONNECTIONS" \
    --server-pid "$pid" --json "$@" > "$OUT/$name.json"
  echo "  $name done ($(cut -d, -f1-3 /proc/loadavg))" >&2
}

echo "== allot-server, demo config (CPU $SERVER_CPU), load on CPU $LOAD_CPU: $RATE req/s for $DURATION" >&2
sed -e 's/home-2026q4/home-2026q4-b/' -e 's/"0\.\.3000"/"0..4000"/' -e 's/"3000\.\.5000"/"4000..5000"/' \
  server/src/demo.yaml > "$OUT/demo-b.yaml"
start_server demo
echo "demo $(rss_kb "$server")" > "$OUT/rss.txt"
load http http "$http_port" "$server"
load http2 http "$http_port" "$server" --http2
load ofrep ofrep "$http_port" "$server" --flag prefetch
load ofrep-bulk ofrep-bulk "$http_port" "$server"
load grpc grpc "$grpc_port" "$server"
load flagd flagd "$grpc_port" "$server" --flag prefetch
load flagd-all flagd-all "$grpc_port" "$server"
want swap && load swap http "$http_port" "$server" --swap-every "$SWAP_EVERY" \
  --swap-url "http://127.0.0.1:$mgmt_port/admin/config" --swap-token "$token" \
  --swap-config "$OUT/demo-b.yaml" --swap-config server/src/demo.yaml
stop_server

if want log; then
  echo "== allot-server, demo config, assignment log on" >&2
  rm -f "$OUT/assignments.jsonl"
  start_server log --assignment-log "$OUT/assignments.jsonl"
  load log http "$http_port" "$server"
  stop_server
  echo "assignment log: $(wc -l < "$OUT/assignments.jsonl") lines" >&2

  echo "== allot-server, 10,000 experiments: idle RSS" >&2
  python3 scripts/gen-config.py experiments 10000 > "$OUT/experiments-10k.json"
  start_server rss10k --config "$OUT/experiments-10k.json"
  echo "10k $(rss_kb "$server")" >> "$OUT/rss.txt"
  stop_server
fi

if want pairs; then
  # The swap and log targets compare one sub-millisecond p99 with another, which this VM moves
  # by 2-3× between runs seconds apart. So measure them interleaved, round after round
  # (baseline, swaps, log on, ...), and compare medians. The baseline and swap runs share one
  # server; the log runs get a fresh server each round (started before the round, idle until
  # its turn), so every log run is the worst case: a cache that starts empty, nearly every
  # request a new unit and a line.
  echo "== interleaved: $PAIR_ROUNDS rounds of native HTTP, with swaps, with the assignment log" >&2
  start_server pairs-demo
  demo_pid=$server
  ports=("$http_port" "$grpc_port" "$mgmt_port")
  for r in $(seq 1 "$PAIR_ROUNDS"); do
    http_port=$((ports[0] + 100)) grpc_port=$((ports[1] + 100)) mgmt_port=$((ports[2] + 100))
    rm -f "$OUT/pairs-assignments-$r.jsonl"
    start_server "pairs-log-$r" --assignment-log "$OUT/pairs-assignments-$r.jsonl"
    log_pid=$server log_http=$http_port
    http_port=${ports[0]} grpc_port=${ports[1]} mgmt_port=${ports[2]}
    RUNS="pair-http-$r" DURATION="$PAIR_DURATION" load "pair-http-$r" http "$http_port" "$demo_pid"
    RUNS="pair-swap-$r" DURATION="$PAIR_DURATION" load "pair-swap-$r" http "$http_port" "$demo_pid" \
      --swap-every "$SWAP_EVERY" --swap-url "http://127.0.0.1:$mgmt_port/admin/config" \
      --swap-token "$token" --swap-config "$OUT/demo-b.yaml" --swap-config server/src/demo.yaml
    RUNS="pair-log-$r" DURATION="$PAIR_DURATION" load "pair-log-$r" http "$log_http" "$log_pid"
    kill "$log_pid"; wait "$log_pid" 2>/dev/null || true
  done
  kill "$demo_pid"; wait "$demo_pid" 2>/dev/null || true
fi

if want grpc-pairs; then
  # gRPC p99 at the rate, and the tonic floor's, alternating round by round on two servers up at
  # once (both on CPU $SERVER_CPU; the idle one costs nothing): one 10 s run cannot tell a slow
  # server from a slow minute of this VM, the floor's own p99 moves 0.9-3.6 ms between runs.
  echo "== interleaved: $PAIR_ROUNDS rounds of gRPC Allocate and the tonic floor" >&2
  start_server grpc-pairs-demo
  demo_pid=$server
  hello_http=$((http_port + 200)) hello_grpc=$((grpc_port + 200))
  bg "$OUT/hello-pairs.log" "$SERVER_CPU" "$bin/allot-hello" --addr "127.0.0.1:$hello_http" \
    --grpc-addr "127.0.0.1:$hello_grpc"
  hello_pid=$!
  pids+=("$hello_pid")
  wait_http "http://127.0.0.1:$hello_http/v1/allocate"
  for r in $(seq 1 "$PAIR_ROUNDS"); do
    RUNS="pair-grpc-$r" DURATION="$PAIR_DURATION" load "pair-grpc-$r" grpc "$grpc_port" "$demo_pid"
    RUNS="pair-floorgrpc-$r" DURATION="$PAIR_DURATION" load "pair-floorgrpc-$r" grpc "$hello_grpc" "$hello_pid"
  done
  kill "$demo_pid" "$hello_pid"; wait "$demo_pid" "$hello_pid" 2>/dev/null || true
fi

if want bulk100 || want bulk100-max; then
  echo "== allot-server, 100 flags: OFREP bulk at $BULK_RATE req/s and at peak" >&2
  python3 scripts/gen-config.py flags > "$OUT/flags-100.json"
  start_server flags100 --config "$OUT/flags-100.json"
  RATE="$BULK_RATE" load bulk100 ofrep-bulk "$http_port" "$server"
  load bulk100-max ofrep-bulk "$http_port" "$server" --max
  stop_server
fi

echo "== allot-hello floor (CPU $SERVER_CPU)" >&2
bg "$OUT/hello.log" "$SERVER_CPU" "$bin/allot-hello" --addr "127.0.0.1:$http_port" \
  --grpc-addr "127.0.0.1:$grpc_port"
hello=$!
pids+=("$hello")
wait_http "http://127.0.0.1:$http_port/v1/allocate"
load floor http "$http_port" "$hello"
load floor-h2 http "$http_port" "$hello" --http2
load floor-grpc grpc "$grpc_port" "$hello"
RATE="$BULK_RATE" load floor-bulk http "$http_port" "$hello"
load floor-max http "$http_port" "$hello" --max
kill "$hello"; wait "$hello" 2>/dev/null || true
echo "== done $(date -u +%FT%TZ); $(uptime)" >&2

python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
rss = dict(line.split() for line in open(f"{out}/rss.txt"))
runs = [
    ("floor", "hello-world floor, HTTP/1.1"),
    ("floor-h2", "hello-world floor, HTTP/2"),
    ("floor-grpc", "hello-world floor, gRPC `Allocate` (tonic)"),
    ("floor-bulk", "hello-world floor, HTTP/1.1, at the bulk rate"),
    ("floor-max", "hello-world floor, HTTP/1.1, at peak (closed loop)"),
    ("http", "native HTTP `/v1/allocate`"),
    ("http2", "native HTTP `/v1/allocate`, HTTP/2"),
    ("ofrep", "OFREP single flag (`prefetch`)"),
    ("ofrep-bulk", "OFREP bulk, demo config (11 flags)"),
    ("bulk100", "OFREP bulk, 100 flags"),
    ("bulk100-max", "OFREP bulk, 100 flags, at peak (closed loop)"),
    ("grpc", "native gRPC `Allocate`"),
    ("flagd", "flagd v2 `ResolveBoolean` (`prefetch`)"),
    ("flagd-all", "flagd v1 `ResolveAll` (11 flags)"),
    ("swap", "native HTTP, config swap every 100 ms"),
    ("log", "native HTTP, assignment log on"),
]
runs = [(n, label) for n, label in runs if os.path.exists(f"{out}/{n}.json")]
r = {n: json.load(open(f"{out}/{n}.json")) for n, _ in runs}
ms = lambda us: f"{us / 1000:.3f}"
print("| run | req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors | shed | server CPU µs/req |")
print("|---|---|---|---|---|---|---|---|---|---|")
for name, label in runs:
    x, l = r[name], r[name]["latency_us"]
    cpu = x.get("server_cpu_us_per_request")
    cpu = f"{cpu:.1f}" if cpu is not None else "n/a"
    print(f"| {label} | {x['achieved_rate']:.0f} | {ms(l['p50'])} | {ms(l['p90'])} | {ms(l['p99'])} | "
          f"{ms(l['p99_9'])} | {ms(l['max'])} | {x['errors']} | {x['shed']} | {cpu} |")
cpu = lambda n: r[n]["server_cpu_us_per_request"]
lat = lambda n, q: r[n]["latency_us"][q]
pair = {}
for kind in ("http", "swap", "log", "grpc", "floorgrpc"):
    got = []
    for i in range(1, 100):
        f = f"{out}/pair-{kind}-{i}.json"
        if not os.path.exists(f):
            break
        got.append(json.load(open(f)))
    if got:
        pair[kind] = got
import statistics
p99s = {k: [x["latency_us"]["p99"] for x in v] for k, v in pair.items()}
med = {k: statistics.median(v) for k, v in p99s.items()}
errs = {k: sum(x["errors"] for x in v) for k, v in pair.items()}
rows = []
def target(needs, name, measured, met, superseded_by=()):
    """One target row, if every run it needs was measured (`measured`, `met` are lambdas).
    A single-run p99 row is shown as a diagnostic when the interleaved rounds in
    `superseded_by` were measured: those decide (the median of several rounds, alternating)."""
    if all(n in r for n in needs):
        if superseded_by and all(k in pair for k in superseded_by):
            ok = met()
            rows.append((f"(single run; the interleaved rounds decide) {name}", measured(), "yes" if ok else "no"))
        else:
            rows.append((name, measured(), met()))
sw = lambda: r["swap"]["swaps"]
target(["http", "floor"], "HTTP CPU/request ≤ 1.5× floor", lambda: f"{cpu('http') / cpu('floor'):.2f}× ({cpu('http'):.1f} vs {cpu('floor'):.1f} µs)", lambda: cpu("http") <= 1.5 * cpu("floor"))
target(["http"], "HTTP p99 < 1 ms at the rate", lambda: f"{ms(lat('http', 'p99'))} ms", lambda: lat("http", "p99") < 1000, superseded_by=("http", "swap", "log"))
target(["http", "floor"], "HTTP p99.9 ≤ 1.5× floor's p99.9", lambda: f"{lat('http', 'p99_9') / lat('floor', 'p99_9'):.2f}× ({ms(lat('http', 'p99_9'))} vs {ms(lat('floor', 'p99_9'))} ms)", lambda: lat("http", "p99_9") <= 1.5 * lat("floor", "p99_9"))
target(["grpc"], "gRPC p99 < 1 ms", lambda: f"{ms(lat('grpc', 'p99'))} ms ({r['grpc']['errors']} errors)", lambda: lat("grpc", "p99") < 1000 and r["grpc"]["errors"] == 0, superseded_by=("grpc", "floorgrpc"))
target(["grpc", "floor"], "gRPC CPU/request ≤ 2× floor", lambda: f"{cpu('grpc') / cpu('floor'):.2f}× ({cpu('grpc'):.1f} vs {cpu('floor'):.1f} µs)", lambda: cpu("grpc") <= 2 * cpu("floor"))
target(["grpc", "floor-grpc"], "(diagnostic) gRPC CPU/request vs the gRPC floor", lambda: f"{cpu('grpc') / cpu('floor-grpc'):.2f}× ({cpu('grpc'):.1f} vs {cpu('floor-grpc'):.1f} µs)", lambda: True)
# Issue 7's reference figures (hello-world 9 µs and ~100,000 req/s, the peers' 23 µs and 410-470 µs)
# are CPU per request at peak, so the bulk target is judged at peak; at a fixed low rate every
# request also pays a sleep and a wake-up (the floor-bulk row).
target(["bulk100-max"], "OFREP bulk, 100 flags ≤ 40 µs CPU/request (at peak)", lambda: f"{cpu('bulk100-max'):.1f} µs ({r['bulk100-max']['achieved_rate']:.0f} req/s)", lambda: cpu("bulk100-max") <= 40)
target(["bulk100-max", "floor-max"], "(diagnostic) OFREP bulk, 100 flags, over the floor at peak", lambda: f"+{cpu('bulk100-max') - cpu('floor-max'):.1f} µs ({cpu('bulk100-max'):.1f} vs {cpu('floor-max'):.1f} µs)", lambda: True)
target(["bulk100"], "(diagnostic) OFREP bulk, 100 flags, CPU/request at the bulk rate", lambda: f"{cpu('bulk100'):.1f} µs", lambda: True)
target(["bulk100", "floor-bulk"], "(diagnostic) OFREP bulk, 100 flags, over the floor at the same rate", lambda: f"+{cpu('bulk100') - cpu('floor-bulk'):.1f} µs ({cpu('bulk100'):.1f} vs {cpu('floor-bulk'):.1f} µs)", lambda: True)
target(["swap"], "swaps every 100 ms: zero errors", lambda: f"{r['swap']['errors']} errors, {sw()['ok']} swaps ok, {sw()['failed']} failed", lambda: r["swap"]["errors"] == 0 and sw()["failed"] == 0 and sw()["ok"] > 0)
target(["swap", "http"], "swaps: p99 within 1.2× of the same run without", lambda: f"{lat('swap', 'p99') / lat('http', 'p99'):.2f}× ({ms(lat('swap', 'p99'))} vs {ms(lat('http', 'p99'))} ms)", lambda: lat("swap", "p99") <= 1.2 * lat("http", "p99"), superseded_by=("http", "swap", "log"))
target(["log", "http"], "assignment log on: p99 within 1.1× of off", lambda: f"{lat('log', 'p99') / lat('http', 'p99'):.2f}× ({ms(lat('log', 'p99'))} vs {ms(lat('http', 'p99'))} ms)", lambda: lat("log", "p99") <= 1.1 * lat("http", "p99"), superseded_by=("http", "swap", "log"))
# Which threads the log's CPU lands on: the runtime's workers serve requests; the log's writer
# thread ("allot-assignment-log", cut to 15 bytes by the kernel) is off the request path.
thread = lambda x, name: (x.get("server_cpu_by_thread_us_per_request") or {}).get(name, 0.0)
WORKER, WRITER = "tokio-rt-worker", "allot-assignmen"
target(["log", "http"], "(diagnostic) assignment log: server CPU/request by thread", lambda: f"workers {thread(r['log'], WORKER):.1f} vs {thread(r['http'], WORKER):.1f} µs off, writer thread {thread(r['log'], WRITER):.1f} µs", lambda: True)
target([], "idle RSS, demo config < 30 MB", lambda: f"{int(rss['demo']) / 1024:.1f} MiB", lambda: int(rss["demo"]) * 1024 < 30e6)
if "10k" in rss:
    target([], "idle RSS, 10,000 experiments < 200 MB", lambda: f"{int(rss['10k']) / 1024:.1f} MiB", lambda: int(rss["10k"]) * 1024 < 200e6)
def rounds_table(kinds):
    rounds = len(pair[kinds[0][0]])
    print(f"\nInterleaved rounds (p99 ms per round; {rounds} rounds):\n")
    print("| run | " + " | ".join(f"round {i + 1}" for i in range(rounds)) + " | median | errors |")
    print("|---|" + "---|" * (rounds + 2))
    for k, label in kinds:
        print(f"| {label} | " + " | ".join(ms(v) for v in p99s[k]) + f" | {ms(med[k])} | {errs[k]} |")
if all(k in pair for k in ("grpc", "floorgrpc")):
    rounds_table([("grpc", "native gRPC `Allocate`"), ("floorgrpc", "hello-world floor, gRPC (tonic)")])
    target([], "(interleaved) gRPC: median p99 < 1 ms, zero errors", lambda: f"{ms(med['grpc'])} ms ({errs['grpc']} errors)", lambda: med["grpc"] < 1000 and errs["grpc"] == 0)
    target([], "(diagnostic, interleaved) tonic floor: median p99", lambda: f"{ms(med['floorgrpc'])} ms", lambda: True)
if all(k in pair for k in ("http", "swap", "log")):
    rounds_table([("http", "native HTTP"), ("swap", "with a swap every 100 ms"), ("log", "with the assignment log")])
    swaps_ok = sum((x.get("swaps") or {}).get("ok", 0) for x in pair["swap"])
    swaps_failed = sum((x.get("swaps") or {}).get("failed", 0) for x in pair["swap"])
    target([], "(interleaved) HTTP: median p99 < 1 ms at the rate", lambda: f"{ms(med['http'])} ms ({errs['http']} errors)", lambda: med["http"] < 1000 and errs["http"] == 0)
    target([], "(interleaved) swaps: zero errors", lambda: f"{errs['swap']} errors, {swaps_ok} swaps ok, {swaps_failed} failed", lambda: errs["swap"] == 0 and swaps_failed == 0 and swaps_ok > 0)
    target([], "(interleaved) swaps: median p99 within 1.2× of without", lambda: f"{med['swap'] / med['http']:.2f}× ({ms(med['swap'])} vs {ms(med['http'])} ms)", lambda: med["swap"] <= 1.2 * med["http"])
    target([], "(interleaved) assignment log on: median p99 within 1.1× of off", lambda: f"{med['log'] / med['http']:.2f}× ({ms(med['log'])} vs {ms(med['http'])} ms)", lambda: med["log"] <= 1.1 * med["http"])
    mt = lambda kind, name: statistics.median(thread(x, name) for x in pair[kind])
    target([], "(diagnostic, interleaved) assignment log: median server CPU/request by thread", lambda: f"workers {mt('log', WORKER):.1f} vs {mt('http', WORKER):.1f} µs off, writer thread {mt('log', WRITER):.1f} µs", lambda: True)
print()
print("| target (issue 7) | measured | met? |")
print("|---|---|---|")
for name, measured, met in rows:
    verdict = met if isinstance(met, str) else ("yes" if met else "**no**")
    print(f"| {name} | {measured} | {verdict} |")
print(f"\nJSON reports in {out}")
PY
