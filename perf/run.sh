#!/usr/bin/env bash
# Measures the proactor transport against Kestrel's socket transport, side by side, on loopback.
# Every scenario runs each transport in turn (sockets, proactor, sockets, proactor, ...) on a fresh server,
# and the report gives medians and proactor/sockets ratios. See perf/README.md for the columns and options.
#
# Exit status: 0 when every run was clean; 1 when any run had an error (a server that did not start or died,
# socket errors, non-2xx responses, a checksum mismatch, a proactor run that fell back without --allow-fallback);
# 2 for bad usage or missing tools. Speed never fails a run.
set -uo pipefail

PERF_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$PERF_DIR")"

usage() {
  cat <<'EOF'
usage: perf/run.sh [--quick] [--allow-fallback] [--pin] [--rounds N] [--duration S] [--warmup S]
                   [--dispatchers N] [--only a,b,...] [--fault MODE] [--port P] [--fresh-servers] [--no-build]
  --quick           CI smoke test: 1 round, 2 s runs, 1,000 idle and 300 trickling connections, 64 MiB transfers
  --allow-fallback  accept a proactor server whose backend fell back to "sockets" (labelled in the report)
  --pin             server on CPU 0, load generators on CPU 1 (taskset); one wrk/h2load thread
  --rounds N        alternating rounds per scenario (default 3; quick 1)
  --duration S      seconds measured per wrk/h2load run (default 5; quick 2)
  --warmup S        seconds of the same load before each measured run, 0 for none (default 2; quick 0)
  --dispatchers N   proactor DispatcherCount (default: the transport's default, the CPU count)
  --only LIST       run only these scenarios (comma-separated ids, see --list)
  --list            print the scenario ids and exit
  --fault MODE      start every server with --fault MODE (status500, corrupt-bytes, crash) to prove the
                    checks fail; the report then must show errors and the exit status must be 1
  --fresh-servers   start a new server for every run (default: one server per transport and scheduling
                    mode, kept across scenarios; idle-memory and trickle-memory always get fresh ones)
  --port P          first loopback port (default 5200); the run uses P..P+15 (see perf/README.md, "Ports")
  --no-build        use the existing Release build
EOF
}

# ---------------------------------------------------------------- options
QUICK=0; ALLOW_FALLBACK=0; PIN=0; ROUNDS=""; DURATION=""; WARMUP=""; DISPATCHERS=""; ONLY=""; FAULT="none"
PORT=5200; PORT_GIVEN=0; BUILD=1; LIST=0; FRESH=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --allow-fallback) ALLOW_FALLBACK=1 ;;
    --pin) PIN=1 ;;
    --rounds) ROUNDS="${2:?--rounds needs a value}"; shift ;;
    --duration) DURATION="${2:?--duration needs a value}"; shift ;;
    --warmup) WARMUP="${2:?--warmup needs a value}"; shift ;;
    --dispatchers) DISPATCHERS="${2:?--dispatchers needs a value}"; shift ;;
    --only) ONLY="${2:?--only needs a value}"; shift ;;
    --fault) FAULT="${2:?--fault needs a value}"; shift ;;
    --port) PORT="${2:?--port needs a value}"; PORT_GIVEN=1; shift ;;
    --no-build) BUILD=0 ;;
    --fresh-servers) FRESH=1 ;;
    --list) LIST=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

if [[ $QUICK -eq 1 ]]; then
  : "${ROUNDS:=1}" "${DURATION:=2}" "${WARMUP:=0}"   # no warm-up: the functional checks warm the kept servers
  IDLE_CONNECTIONS=1000; TRANSFER_BYTES=$((64 * 1024 * 1024)); WS_MESSAGES=200; TRICKLE_CONNECTIONS=300
else
  : "${ROUNDS:=3}" "${DURATION:=5}" "${WARMUP:=2}"
  IDLE_CONNECTIONS=10000; TRANSFER_BYTES=$((1024 * 1024 * 1024)); WS_MESSAGES=1000; TRICKLE_CONNECTIONS=1000
fi
for n in "$ROUNDS" "$DURATION" "$PORT" ${DISPATCHERS:+"$DISPATCHERS"}; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: '$n' is not a positive integer" >&2; exit 2; }
done
[[ "$WARMUP" =~ ^[0-9]+$ ]] || { echo "run.sh: --warmup '$WARMUP' is not a non-negative integer" >&2; exit 2; }

# Scenario table: id | tool | what it runs. Inline scenarios start both servers with --inline.
SCENARIOS=(
  "functional"          # every endpoint answers correctly (bodies, digests, h2c, WebSocket) - errors only
  "ceiling"             # perf/Ceiling, a raw epoll responder with no HTTP stack, under the plaintext loads; once per round
  "latency"             # wrk GET /plaintext, 1 connection, one request in flight: p50 and p99
  "plaintext-16"        # wrk GET /plaintext, 16 connections
  "plaintext-64"        # wrk GET /plaintext, 64 connections
  "plaintext-256"       # wrk GET /plaintext, 256 connections
  "pipelined-16"        # wrk GET /plaintext, 256 connections, 16 requests per write
  "json-256"            # wrk GET /json, 256 connections
  "hash-256"            # wrk POST /hash with a 64 KiB body, 256 connections
  "wait-256"            # wrk GET /wait (0-5 ms await), 256 connections
  "churn-64"            # wrk GET /plaintext with Connection: close, 64 connections
  "https"               # wrk GET /plaintext over TLS (self-signed certificate), 256 connections
  "proxy"               # wrk GET /proxy/plaintext, 256 connections: a reverse proxy in front of a socket-transport backend
  "h2c-plaintext"       # h2load h2c GET /plaintext, 64 connections x 16 streams per connection
  "ws-echo"             # WebSocket echo, 64 connections x 128-byte messages
  "idle-memory"         # RSS per idle keep-alive connection
  "trickle-memory"      # RSS per connection trickling an unfinished request head, one byte per packet
  "upload"              # POST the pattern to /hash, digest checked
  "download"            # GET /bytes/N, digest checked
  "inline-plaintext-256"  # plaintext-256 with UnsafePreferInlineScheduling on both transports
  "inline-pipelined-16"   # pipelined-16 with UnsafePreferInlineScheduling on both transports
)
SCENARIO_IDS=("${SCENARIOS[@]}")
if [[ $LIST -eq 1 ]]; then printf '%s\n' "${SCENARIO_IDS[@]}"; exit 0; fi
if [[ -n "$ONLY" ]]; then
  IFS=',' read -r -a SELECTED <<<"$ONLY"
  for s in "${SELECTED[@]}"; do
    printf '%s\n' "${SCENARIO_IDS[@]}" | grep -qx -- "$s" || { echo "run.sh: unknown scenario '$s' (see --list)" >&2; exit 2; }
  done
else
  SELECTED=("${SCENARIO_IDS[@]}")
fi

# The run uses PORT..PORT+15: P..P+7 the four servers' HTTP/1.1 and h2c ports (as before), P+8..P+11 their https
# ports, P+12 the proxy backend (P+13 its unused h2c port), P+14 the ceiling. Another run on the same machine (or
# anything else) holding one of them would make every server start fail; a default port range that is busy moves
# up, an explicit --port must be free.
PORT_SPAN=16
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
ports_free() { local p; for p in $(seq "$1" $(($1 + PORT_SPAN - 1))); do port_busy "$p" && return 1; done; return 0; }
PORT_NOTE=""
if ! ports_free "$PORT"; then
  [[ $PORT_GIVEN -eq 1 ]] && { echo "run.sh: a port in $PORT-$((PORT + PORT_SPAN - 1)) is in use" >&2; exit 2; }
  busy_range="$PORT-$((PORT + PORT_SPAN - 1))"
  for _ in $(seq 1 20); do PORT=$((PORT + 20)); ports_free "$PORT" && break; done
  ports_free "$PORT" || { echo "run.sh: no free range of $PORT_SPAN ports found above $busy_range" >&2; exit 2; }
  PORT_NOTE=" ($busy_range were in use at start: if another benchmark was running, it disturbed these numbers)"
  echo "run.sh: ports $busy_range are in use; using $PORT-$((PORT + PORT_SPAN - 1))$PORT_NOTE" >&2
fi
BACKEND_PORT=$((PORT + 12)); CEILING_PORT=$((PORT + 14))
# Servers listen for https and proxy only when a run needs it, so the other scenarios see the same server as before.
selected() { printf '%s\n' "${SELECTED[@]}" | grep -qx -- "$1"; }
NEED_HTTPS=0; selected https && NEED_HTTPS=1
NEED_PROXY=0; selected proxy && NEED_PROXY=1

# ---------------------------------------------------------------- tools
need_tool() { command -v "$1" >/dev/null 2>&1; }
if ! need_tool wrk || ! need_tool h2load; then
  if [[ $(id -u) -eq 0 ]] && need_tool apt-get; then
    echo "run.sh: installing wrk and nghttp2-client (h2load) from Debian" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nghttp2-client >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nghttp2-client >/dev/null 2>&1; }
  fi
fi
for tool in wrk h2load curl sha256sum dotnet taskset; do
  need_tool "$tool" || { echo "run.sh: '$tool' is required (Debian: apt-get install wrk nghttp2-client curl coreutils util-linux)" >&2; exit 2; }
done
if [[ $PIN -eq 1 && $(nproc) -lt 2 ]]; then echo "run.sh: --pin needs at least 2 CPUs" >&2; exit 2; fi

# Syscalls are counted with perf's raw_syscalls:sys_enter tracepoint; without it that column says n/a.
SYSCALL_COUNTER=0
if need_tool perf && perf stat -e raw_syscalls:sys_enter -x, -o /dev/null -- true >/dev/null 2>&1; then
  SYSCALL_COUNTER=1
fi

# 10,000 idle connections need that many descriptors in the server and in the client.
ulimit -n "$(ulimit -Hn)" 2>/dev/null
if [[ $(ulimit -n) != unlimited && $(ulimit -n) -lt $((IDLE_CONNECTIONS + 1000)) ]]; then
  echo "run.sh: ulimit -n is $(ulimit -n); $IDLE_CONNECTIONS idle connections need more (raise the hard limit)" >&2
  exit 2
fi

# ---------------------------------------------------------------- build
SERVER_DLL="$PERF_DIR/BenchmarkServer/bin/Release/net10.0/KestrelProactor.Perf.BenchmarkServer.dll"
CLIENT_DLL="$PERF_DIR/LoadClient/bin/Release/net10.0/KestrelProactor.Perf.LoadClient.dll"
REPORT_DLL="$PERF_DIR/Report/bin/Release/net10.0/KestrelProactor.Perf.Report.dll"
CHART_DLL="$PERF_DIR/Chart/bin/Release/net10.0/KestrelProactor.Perf.Chart.dll"
CEILING_DLL="$PERF_DIR/Ceiling/bin/Release/net10.0/KestrelProactor.Perf.Ceiling.dll"
if [[ $BUILD -eq 1 ]]; then
  echo "run.sh: building perf/perf.slnf and perf/Ceiling (Release)"
  # The ceiling has no dependency on the repository's projects and is not in the solution: built on its own.
  if ! { dotnet build "$PERF_DIR/perf.slnf" -c Release -nologo -v q && dotnet build "$PERF_DIR/Ceiling/Ceiling.csproj" -c Release -nologo -v q; } >"/tmp/perf-build.log" 2>&1; then
    tail -30 /tmp/perf-build.log >&2; echo "run.sh: the Release build failed (log: /tmp/perf-build.log)" >&2; exit 2
  fi
fi
for dll in "$SERVER_DLL" "$CLIENT_DLL" "$REPORT_DLL" "$CHART_DLL" "$CEILING_DLL"; do
  [[ -f "$dll" ]] || { echo "run.sh: $dll is missing (run without --no-build)" >&2; exit 2; }
done

# ---------------------------------------------------------------- output
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
WORK="$PERF_DIR/results/tmp/$STAMP"
mkdir -p "$WORK"
RAW="$WORK/raw.csv"
ERRORS="$WORK/errors.tsv"
echo "scenario,round,transport,backend,unit,value,p50_us,p99_us,cpu_us_per_op,syscalls_per_op,ctxsw_per_op,ops,errors" >"$RAW"
: >"$ERRORS"
CPU_MODEL="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
MACHINE_SLUG="$(nproc)cpu-$(echo "${CPU_MODEL:-unknown}" | tr 'A-Z' 'a-z' | sed 's/([^)]*)//g; s/[^a-z0-9]\+/-/g; s/^-//; s/-$//' | cut -c1-24)"
RESULT_BASE="$PERF_DIR/results/$(date -u +%Y-%m-%d)-${MACHINE_SLUG}$([[ $QUICK -eq 1 ]] && echo -quick)"
# Only complete, fault-free runs land in perf/results/; partial (--only) and --fault runs stay in the scratch folder.
if [[ -n "$ONLY" || "$FAULT" != none ]]; then RESULT_BASE="$WORK/report"; fi

WRK_THREADS=$([[ $PIN -eq 1 ]] && echo 1 || nproc)
SERVER_PIN=(); CLIENT_PIN=()
if [[ $PIN -eq 1 ]]; then SERVER_PIN=(taskset -c 0); CLIENT_PIN=(taskset -c 1); fi
export PERF_WRK_DIR="$PERF_DIR/wrk"

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

# record_error SCENARIO ROUND TRANSPORT MESSAGE - every error lands in the report.
record_error() {
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$(echo "$4" | tr '\t\n' '  ')" >>"$ERRORS"
  log "ERROR [$1 round $2 $3] $4"
}

# ---------------------------------------------------------------- server lifecycle
# The current server: set by acquire_server, read by every run_* function.
SERVER_PID=""; SERVER_BACKEND=""; SERVER_LOG=""; SERVER_RUNTIME=""; SRV_PORT=""; SRV_H2_PORT=""; SRV_HTTPS_PORT=""
# Servers kept across scenarios, keyed "transport-inline" (unless --fresh-servers).
declare -A KEPT_PID KEPT_LOG KEPT_BACKEND KEPT_RUNTIME KEPT_LAST

# start_server TRANSPORT INLINE(0|1) SCENARIO ROUND -> 0 when ready and on the requested transport.
start_server() {
  local transport=$1 inline=$2 scenario=$3 round=$4
  SERVER_LOG="$WORK/server-$scenario-$round-$transport$([[ $inline -eq 1 ]] && echo -inline).log"
  SERVER_BACKEND=""; SERVER_PID=""
  local args=(--transport "$transport" --port "$SRV_PORT" --h2-port "$SRV_H2_PORT" --fault "$FAULT")
  [[ $inline -eq 1 ]] && args+=(--inline)
  [[ -n "$DISPATCHERS" ]] && args+=(--dispatchers "$DISPATCHERS")
  [[ $NEED_HTTPS -eq 1 ]] && args+=(--https-port "$SRV_HTTPS_PORT")
  [[ $NEED_PROXY -eq 1 ]] && args+=(--proxy-backend "$BACKEND_PORT")
  "${SERVER_PIN[@]}" dotnet "$SERVER_DLL" "${args[@]}" >"$SERVER_LOG" 2>&1 &
  SERVER_PID=$!
  local ready=""
  for _ in $(seq 1 300); do   # 30 s at most
    ready="$(grep -m1 '^BENCH-READY' "$SERVER_LOG" 2>/dev/null)"
    [[ -n "$ready" ]] && break
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  if [[ -z "$ready" ]]; then
    record_error "$scenario" "$round" "$transport" "server did not start: $(tail -3 "$SERVER_LOG" | tr '\n' ' ')"
    stop_server "$scenario" "$round" "$transport" quiet
    return 1
  fi
  SERVER_BACKEND="$(sed -n 's/.* backend=\([^ ]*\).*/\1/p' <<<"$ready")"
  SERVER_RUNTIME="$(sed -n 's/.* runtime=\([^ ]*\).*/\1/p' <<<"$ready")"
  local reason; reason="$(sed -n 's/.*fallbackReason="\(.*\)"/\1/p' <<<"$ready")"
  if [[ "$transport" == proactor && "$SERVER_BACKEND" != io_uring && "$SERVER_BACKEND" != iocp ]]; then
    echo "$reason" >"$WORK/fallback-reason.txt"
    if [[ $ALLOW_FALLBACK -eq 0 ]]; then
      record_error "$scenario" "$round" "$transport" "proactor requested but backend=$SERVER_BACKEND ($reason); pass --allow-fallback to measure anyway"
      stop_server "$scenario" "$round" "$transport" quiet
      return 1
    fi
  fi
  if [[ "$transport" == sockets && "$SERVER_BACKEND" != sockets ]]; then
    record_error "$scenario" "$round" "$transport" "sockets requested but backend=$SERVER_BACKEND"
    stop_server "$scenario" "$round" "$transport" quiet
    return 1
  fi
  # The connection itself must agree with the factory: a proactor connection carries IProactorConnectionFeature.
  local served; served="$(curl -sS --max-time 5 "http://127.0.0.1:$SRV_PORT/transport" 2>&1 | cut -d' ' -f1)"
  if [[ "$served" != "$SERVER_BACKEND" ]]; then
    record_error "$scenario" "$round" "$transport" "factory reports backend=$SERVER_BACKEND but a connection was served by '$served'"
    stop_server "$scenario" "$round" "$transport" quiet
    return 1
  fi
  return 0
}

# stop_server SCENARIO ROUND TRANSPORT [quiet] - a server that died before we stopped it is an error.
stop_server() {
  local scenario=$1 round=$2 transport=$3 quiet=${4:-}
  [[ -z "$SERVER_PID" ]] && return 0
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    wait "$SERVER_PID" 2>/dev/null; local code=$?
    [[ -z "$quiet" ]] && record_error "$scenario" "$round" "$transport" "server died (exit $code): $(tail -2 "$SERVER_LOG" | tr '\n' ' ')"
    SERVER_PID=""; return 1
  fi
  kill -TERM "$SERVER_PID" 2>/dev/null
  for _ in $(seq 1 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.05; done
  if kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -KILL "$SERVER_PID" 2>/dev/null
    record_error "$scenario" "$round" "$transport" "server ignored SIGTERM for 5 s and was killed"
  fi
  wait "$SERVER_PID" 2>/dev/null
  SERVER_PID=""
  return 0
}

# use_kept KEY: make the kept server KEY the current one.
use_kept() {
  SERVER_PID="${KEPT_PID[$1]}"; SERVER_LOG="${KEPT_LOG[$1]}"; SERVER_BACKEND="${KEPT_BACKEND[$1]}"; SERVER_RUNTIME="${KEPT_RUNTIME[$1]}"
}

# forget_kept KEY SCENARIO ROUND TRANSPORT: stop the kept server KEY (an error if it had died) and drop it.
forget_kept() {
  [[ -z "${KEPT_PID[$1]:-}" ]] && return 0
  use_kept "$1"
  stop_server "$2" "$3" "$4"
  unset "KEPT_PID[$1]"
}

# acquire_server TRANSPORT INLINE SCENARIO ROUND FRESH(0|1): a ready server, kept or new. Each transport and
# scheduling mode has its own ports, so a kept server never has to give its port up.
acquire_server() {
  local transport=$1 inline=$2 scenario=$3 round=$4 fresh=$5 key="$1-$2"
  local offset=$((inline * 4)); [[ $transport == proactor ]] && offset=$((offset + 2))
  SRV_PORT=$((PORT + offset)); SRV_H2_PORT=$((SRV_PORT + 1)); SRV_HTTPS_PORT=$((PORT + 8 + offset / 2))
  if [[ -n "${KEPT_PID[$key]:-}" ]]; then
    if ! kill -0 "${KEPT_PID[$key]}" 2>/dev/null; then
      # It died after its previous run had been checked: blame that run, and start a new one for this run.
      use_kept "$key"; wait "$SERVER_PID" 2>/dev/null; local code=$?
      record_error "${KEPT_LAST[$key]}" "-" "$transport" "server died after this scenario's run (exit $code): $(tail -2 "$SERVER_LOG" | tr '\n' ' ')"
      unset "KEPT_PID[$key]"
    elif [[ $fresh -eq 1 || $FRESH -eq 1 ]]; then
      forget_kept "$key" "$scenario" "$round" "$transport"
    else
      use_kept "$key"
      return 0
    fi
  fi
  start_server "$transport" "$inline" "$scenario" "$round" || return 1
  KEPT_PID[$key]="$SERVER_PID"; KEPT_LOG[$key]="$SERVER_LOG"; KEPT_BACKEND[$key]="$SERVER_BACKEND"; KEPT_RUNTIME[$key]="$SERVER_RUNTIME"
  return 0
}

# release_server TRANSPORT INLINE SCENARIO ROUND FRESH: after a run; a server that died during it is that run's error.
release_server() {
  local transport=$1 inline=$2 scenario=$3 round=$4 fresh=$5 key="$1-$2"
  KEPT_LAST[$key]="$scenario"
  if [[ $fresh -eq 1 || $FRESH -eq 1 ]]; then
    forget_kept "$key" "$scenario" "$round" "$transport"
  elif ! kill -0 "$SERVER_PID" 2>/dev/null; then
    stop_server "$scenario" "$round" "$transport"
    unset "KEPT_PID[$key]"
  fi
}

# ---------------------------------------------------------------- helper processes
# Processes that are not a server under test: the proxy scenario's backend and the ceiling responder. Each is
# started when first needed, kept for the whole run, checked after every run that used it, and stopped at the end.
declare -A AUX_PID AUX_LOG

# start_aux NAME SCENARIO ROUND TRANSPORT READY_PREFIX CMD... -> 0 once CMD printed a line starting READY_PREFIX.
start_aux() {
  local name=$1 scenario=$2 round=$3 transport=$4 prefix=$5; shift 5
  local logf="$WORK/$name.log" pid ready=0
  "$@" >"$logf" 2>&1 &
  pid=$!
  for _ in $(seq 1 300); do   # 30 s at most
    grep -q "^$prefix" "$logf" 2>/dev/null && { ready=1; break; }
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if [[ $ready -eq 0 ]]; then
    record_error "$scenario" "$round" "$transport" "$name did not start: $(tail -3 "$logf" | tr '\n' ' ')"
    kill -KILL "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
    return 1
  fi
  AUX_PID[$name]=$pid; AUX_LOG[$name]=$logf
  return 0
}

# aux_alive NAME SCENARIO ROUND TRANSPORT -> 0 when NAME is running; when it died, that is this run's error.
aux_alive() {
  local name=$1 pid="${AUX_PID[$1]:-}"
  [[ -z "$pid" ]] && return 1
  kill -0 "$pid" 2>/dev/null && return 0
  wait "$pid" 2>/dev/null; local code=$?
  record_error "$2" "$3" "$4" "$name died (exit $code): $(tail -2 "${AUX_LOG[$name]}" | tr '\n' ' ')"
  unset "AUX_PID[$name]"
  return 1
}

# stop_aux NAME: SIGTERM, then SIGKILL after 5 s (an error: it must stop cleanly).
stop_aux() {
  local name=$1 pid="${AUX_PID[$1]:-}"
  [[ -z "$pid" ]] && return 0
  aux_alive "$name" "$name" "-" "-" || return 0
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null
    record_error "$name" "-" "-" "$name ignored SIGTERM for 5 s and was killed"
  fi
  wait "$pid" 2>/dev/null
  unset "AUX_PID[$name]"
}

cleanup() {
  for key in "${!KEPT_PID[@]}"; do kill -KILL "${KEPT_PID[$key]}" 2>/dev/null; done
  for name in "${!AUX_PID[@]}"; do kill -KILL "${AUX_PID[$name]}" 2>/dev/null; done
  [[ -n "${IDLE_PID:-}" ]] && kill -KILL "$IDLE_PID" 2>/dev/null
}
trap cleanup EXIT
trap 'echo "run.sh: interrupted" >&2; exit 130' INT TERM

# ---------------------------------------------------------------- process counters
# cpu_ticks PID: utime+stime of the whole process (fields 14 and 15, counted after the ")" of the command name).
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
# ctx_switches PID: voluntary + nonvoluntary context switches summed over the threads alive now. A thread that exits
# during a run takes its count with it (a round once came out negative), so with perf the count is perf's instead.
ctx_switches() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/^(non)?voluntary_ctxt_switches/ { s += $2 } END { print s + 0 }'; }
rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status" 2>/dev/null; }
CLK_TCK="$(getconf CLK_TCK)"

# measured SCENARIO ROUND TRANSPORT OUTFILE -- CMD...: runs CMD while counting the server's CPU, context
# switches and (with perf) syscalls over exactly CMD's lifetime. Sets M_CPU_US, M_CTX, M_SYSCALLS ("" if n/a).
measured() {
  local outfile=$4; shift 5
  local t0 c0 t1 c1
  t0=$(cpu_ticks "$SERVER_PID"); c0=$(ctx_switches "$SERVER_PID")
  if [[ $SYSCALL_COUNTER -eq 1 ]]; then
    perf stat -e raw_syscalls:sys_enter,context-switches -p "$SERVER_PID" -x, -o "$outfile.perf" -- "$@" >"$outfile" 2>&1
  else
    "$@" >"$outfile" 2>&1
  fi
  local status=$?
  t1=$(cpu_ticks "$SERVER_PID"); c1=$(ctx_switches "$SERVER_PID")
  M_CPU_US=$(( (t1 - t0) * 1000000 / CLK_TCK ))
  M_CTX=$(( c1 - c0 ))
  M_SYSCALLS=""
  if [[ $SYSCALL_COUNTER -eq 1 ]]; then
    M_SYSCALLS="$(awk -F, '/raw_syscalls:sys_enter/ { if ($1 ~ /^[0-9]+$/) print $1 }' "$outfile.perf")"
    # perf follows threads that start or exit during the run; the /proc sum above cannot.
    local perf_ctx
    perf_ctx="$(awk -F, '/context-switches/ { if ($1 ~ /^[0-9]+$/) print $1 }' "$outfile.perf")"
    [[ -n "$perf_ctx" ]] && M_CTX=$perf_ctx
  fi
  return $status
}

per_op() { # per_op TOTAL OPS -> TOTAL/OPS with 3 decimals, or empty
  [[ -z "$1" || -z "$2" || "$2" == 0 ]] && return 0
  awk -v t="$1" -v o="$2" 'BEGIN { printf "%.3f", t / o }'
}

# emit SCENARIO ROUND TRANSPORT UNIT VALUE P50 P99 OPS ERRORS: one raw row with the cost columns from `measured`.
emit() {
  local ops=$8
  printf '%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s\n' "$1" "$2" "$3" "$SERVER_BACKEND" "$4" "$5" "$6" "$7" \
    "$(per_op "$M_CPU_US" "$ops")" "$(per_op "$M_SYSCALLS" "$ops")" "$(per_op "$M_CTX" "$ops")" "$ops" "$9" >>"$RAW"
}

# ---------------------------------------------------------------- load runs
# wrk_args SCENARIO -> the wrk arguments after the common ones.
wrk_args() {
  local url="http://127.0.0.1:$SRV_PORT"
  case "$1" in
    latency) echo "-c 1 -s $PERF_WRK_DIR/report.lua $url/plaintext" ;;
    plaintext-16|ceiling-16) echo "-c 16 -s $PERF_WRK_DIR/report.lua $url/plaintext" ;;
    plaintext-64|ceiling-64) echo "-c 64 -s $PERF_WRK_DIR/report.lua $url/plaintext" ;;
    plaintext-256|inline-plaintext-256|ceiling-256) echo "-c 256 -s $PERF_WRK_DIR/report.lua $url/plaintext" ;;
    pipelined-16|inline-pipelined-16|ceiling-pipelined-16) echo "-c 256 -s $PERF_WRK_DIR/pipeline.lua $url/plaintext" ;;
    json-256) echo "-c 256 -s $PERF_WRK_DIR/report.lua $url/json" ;;
    hash-256) echo "-c 256 -s $PERF_WRK_DIR/hash.lua $url/hash" ;;
    wait-256) echo "-c 256 -s $PERF_WRK_DIR/report.lua $url/wait" ;;
    churn-64) echo "-c 64 -s $PERF_WRK_DIR/report.lua $url/plaintext" ;;
    https) echo "-c 256 -s $PERF_WRK_DIR/report.lua https://127.0.0.1:$SRV_HTTPS_PORT/plaintext" ;;
    proxy) echo "-c 256 -s $PERF_WRK_DIR/report.lua $url/proxy/plaintext" ;;
  esac
}

# wrk_errors FILE -> "" or a description of every error wrk counted (and of a run that printed no result).
wrk_errors() {
  local line; line="$(grep -m1 '^WRK-RESULT' "$1")"
  if [[ -z "$line" ]]; then echo "wrk produced no result: $(tail -3 "$1" | tr '\n' ' ')"; return; fi
  local out=""
  for kind in connect read write status timeout; do
    local n; n="$(sed -n "s/.* $kind=\([0-9]*\).*/\1/p" <<<"$line")"
    [[ "$n" != 0 ]] && out+="$kind=$n "
  done
  local requests; requests="$(sed -n 's/.* requests=\([0-9]*\).*/\1/p' <<<"$line")"
  [[ "$requests" == 0 ]] && out+="no requests completed "
  [[ -n "$out" ]] && echo "wrk errors: ${out% }$([[ "$out" == *status=* ]] && echo ' (status = responses >= 400)')"
}

# prime SCENARIO ROUND TRANSPORT CURL_ARGS...: one request that must answer exactly "Hello, World!" with a 200.
prime() {
  local scenario=$1 round=$2 transport=$3; shift 3
  local got; got="$(curl -sS --max-time 10 -w ' %{http_code}' "$@" 2>&1)"
  [[ "$got" == "Hello, World! 200" ]] \
    || record_error "$scenario" "$round" "$transport" "first request: expected 'Hello, World! 200', got '$(head -c 200 <<<"$got" | tr '\n' ' ')'"
}

run_wrk() {
  local scenario=$1 round=$2 transport=$3
  local args; read -r -a args <<<"$(wrk_args "$scenario")"
  local headers=()
  [[ "$scenario" == churn-64 ]] && headers=(-H "Connection: close")
  # One connection with one request in flight: wrk needs at least one connection per thread.
  local threads=$WRK_THREADS; [[ "$scenario" == latency ]] && threads=1
  local base="$WORK/$scenario-$round-$transport"
  # TLS and the proxy's client run code nothing before them has run, and quick mode has no warm-up: one checked
  # request first (wrk counts only statuses, this also checks the body), so a run does not measure their JIT.
  case "$scenario" in
    https) prime "$scenario" "$round" "$transport" -k "https://127.0.0.1:$SRV_HTTPS_PORT/plaintext" ;;
    proxy) prime "$scenario" "$round" "$transport" "http://127.0.0.1:$SRV_PORT/proxy/plaintext" ;;
  esac
  # Warm-up: the same load, not measured, but its errors count.
  local e=""
  if [[ $WARMUP -gt 0 ]]; then
    "${CLIENT_PIN[@]}" wrk -t "$threads" -d "${WARMUP}s" "${headers[@]}" "${args[@]}" >"$base.warmup.txt" 2>&1
    e="$(wrk_errors "$base.warmup.txt")"
    [[ -n "$e" ]] && record_error "$scenario" "$round" "$transport" "warm-up: $e"
  fi
  measured "$scenario" "$round" "$transport" "$base.txt" -- "${CLIENT_PIN[@]}" wrk -t "$threads" -d "${DURATION}s" --latency "${headers[@]}" "${args[@]}"
  local line; line="$(grep -m1 '^WRK-RESULT' "$base.txt")"
  local requests duration p50 p99
  requests="$(sed -n 's/.* requests=\([0-9]*\).*/\1/p' <<<"$line")"
  duration="$(sed -n 's/.* duration_us=\([0-9]*\).*/\1/p' <<<"$line")"
  p50="$(sed -n 's/.* p50_us=\([0-9]*\).*/\1/p' <<<"$line")"
  p99="$(sed -n 's/.* p99_us=\([0-9]*\).*/\1/p' <<<"$line")"
  # wrk has answered 0 for the 99th percentile of a pipelined run: a p99 below the p50 is not a measurement.
  if [[ -n "$p99" && -n "$p50" ]] && (( p99 < p50 )); then p99=""; fi
  e="$(wrk_errors "$base.txt")"
  [[ -n "$e" ]] && record_error "$scenario" "$round" "$transport" "$e"
  local rps=""
  [[ -n "$requests" && -n "$duration" && "$duration" != 0 ]] && rps="$(awk -v r="$requests" -v d="$duration" 'BEGIN { printf "%.0f", r * 1e6 / d }')"
  emit "$scenario" "$round" "$transport" "req/s" "$rps" "$p50" "$p99" "$requests" "$([[ -n "$e" ]] && echo 1 || echo 0)"
  log "$scenario round $round $transport: ${rps:-?} req/s p50 ${p50:-?} us p99 ${p99:-?} us${e:+ ($e)}"
}

# proxy: the server under test forwards /proxy/plaintext to one backend process on the socket transport, the
# same for both transports and kept for the whole run; only the proxy's own costs are counted.
run_proxy() {
  local scenario=$1 round=$2 transport=$3
  if [[ -z "${AUX_PID[backend]:-}" ]] && ! start_aux backend "$scenario" "$round" "$transport" BENCH-READY \
      "${SERVER_PIN[@]}" dotnet "$SERVER_DLL" --transport sockets --port "$BACKEND_PORT" --h2-port "$((BACKEND_PORT + 1))" --fault "$FAULT"; then
    M_CPU_US=""; M_SYSCALLS=""; M_CTX=""
    emit "$scenario" "$round" "$transport" "req/s" "" "" "" "" 1
    return
  fi
  run_wrk "$scenario" "$round" "$transport"
  aux_alive backend "$scenario" "$round" "$transport"
}

# ceiling: perf/Ceiling (one thread, epoll, no HTTP stack) under the wrk loads of plaintext-16/64/256 and
# pipelined-16, once per round; the report sets the plaintext rows against it ("percent of ceiling").
CEILING_LOADS=(ceiling-16 ceiling-64 ceiling-256 ceiling-pipelined-16)
run_ceiling() {
  local round=$1 load
  if [[ -z "${AUX_PID[ceiling]:-}" ]] && ! start_aux ceiling ceiling "$round" ceiling CEILING-READY \
      "${SERVER_PIN[@]}" dotnet "$CEILING_DLL" --port "$CEILING_PORT"; then
    M_CPU_US=""; M_SYSCALLS=""; M_CTX=""; SERVER_BACKEND=none
    for load in "${CEILING_LOADS[@]}"; do emit "$load" "$round" ceiling "req/s" "" "" "" "" 1; done
    return
  fi
  SERVER_PID="${AUX_PID[ceiling]}"; SERVER_BACKEND=epoll; SRV_PORT=$CEILING_PORT
  for load in "${CEILING_LOADS[@]}"; do
    run_wrk "$load" "$round" ceiling
    aux_alive ceiling "$load" "$round" ceiling || break
  done
  SERVER_PID=""
}

# h2load_errors FILE -> "" or a description of every failed, errored, timed-out or non-2xx request.
h2load_errors() {
  local req codes
  req="$(grep -m1 '^requests:' "$1")"; codes="$(grep -m1 '^status codes:' "$1")"
  if [[ -z "$req" || -z "$codes" ]]; then echo "h2load produced no result: $(tail -3 "$1" | tr '\n' ' ')"; return; fi
  local failed errored timeout succeeded c3 c4 c5 out=""
  failed="$(sed -n 's/.* \([0-9]*\) failed.*/\1/p' <<<"$req")"
  errored="$(sed -n 's/.* \([0-9]*\) errored.*/\1/p' <<<"$req")"
  timeout="$(sed -n 's/.* \([0-9]*\) timeout.*/\1/p' <<<"$req")"
  succeeded="$(sed -n 's/.* \([0-9]*\) succeeded.*/\1/p' <<<"$req")"
  c3="$(sed -n 's/.* \([0-9]*\) 3xx.*/\1/p' <<<"$codes")"; c4="$(sed -n 's/.* \([0-9]*\) 4xx.*/\1/p' <<<"$codes")"
  c5="$(sed -n 's/.* \([0-9]*\) 5xx.*/\1/p' <<<"$codes")"
  [[ "$failed" != 0 ]] && out+="failed=$failed "
  [[ "$errored" != 0 ]] && out+="errored=$errored "
  [[ "$timeout" != 0 ]] && out+="timeout=$timeout "
  [[ "$c3" != 0 || "$c4" != 0 || "$c5" != 0 ]] && out+="non-2xx=3xx:$c3,4xx:$c4,5xx:$c5 "
  [[ "$succeeded" == 0 ]] && out+="no requests succeeded "
  [[ -n "$out" ]] && echo "h2load errors: ${out% }"
}

run_h2load() {
  local scenario=$1 round=$2 transport=$3
  local base="$WORK/$scenario-$round-$transport"
  local args=(-c 64 -m 16 -t "$WRK_THREADS" "http://127.0.0.1:$SRV_H2_PORT/plaintext")
  local e=""
  if [[ $WARMUP -gt 0 ]]; then
    "${CLIENT_PIN[@]}" h2load -D "$WARMUP" "${args[@]}" >"$base.warmup.txt" 2>&1
    e="$(h2load_errors "$base.warmup.txt")"
    [[ -n "$e" ]] && record_error "$scenario" "$round" "$transport" "warm-up: $e"
  fi
  measured "$scenario" "$round" "$transport" "$base.txt" -- "${CLIENT_PIN[@]}" h2load -D "$DURATION" "${args[@]}"
  local rps succeeded
  rps="$(sed -n 's/^finished in [^,]*, \([0-9.]*\) req\/s.*/\1/p' "$base.txt" | head -1)"
  succeeded="$(sed -n 's/^requests:.* \([0-9]*\) succeeded.*/\1/p' "$base.txt" | head -1)"
  e="$(h2load_errors "$base.txt")"
  [[ -n "$e" ]] && record_error "$scenario" "$round" "$transport" "$e"
  # h2load reports no percentiles; p50/p99 stay empty rather than show its mean under the wrong name.
  emit "$scenario" "$round" "$transport" "req/s" "${rps%.*}" "" "" "$succeeded" "$([[ -n "$e" ]] && echo 1 || echo 0)"
  log "$scenario round $round $transport: ${rps:-?} req/s${e:+ ($e)}"
}

run_ws() {
  local scenario=$1 round=$2 transport=$3
  local base="$WORK/$scenario-$round-$transport"
  [[ $WARMUP -eq 0 ]] || "${CLIENT_PIN[@]}" dotnet "$CLIENT_DLL" ws --port "$SRV_PORT" --connections 16 --messages 50 >"$base.warmup.txt" 2>&1 \
    || record_error "$scenario" "$round" "$transport" "warm-up: $(grep -m1 WS-DONE "$base.warmup.txt" || tail -2 "$base.warmup.txt")"
  measured "$scenario" "$round" "$transport" "$base.txt" -- "${CLIENT_PIN[@]}" dotnet "$CLIENT_DLL" ws --port "$SRV_PORT" --connections 64 --messages "$WS_MESSAGES" --size 128
  local status=$?
  local line; line="$(grep -m1 '^WS-DONE' "$base.txt")"
  local echoed rate
  echoed="$(sed -n 's/.* echoed=\([0-9]*\).*/\1/p' <<<"$line")"; rate="$(sed -n 's/.* msgPerSec=\([0-9]*\).*/\1/p' <<<"$line")"
  local err=0
  if [[ $status -ne 0 || -z "$line" ]]; then err=1; record_error "$scenario" "$round" "$transport" "WebSocket echo failed: ${line:-$(tail -2 "$base.txt" | tr '\n' ' ')}"; fi
  # The client's own CPU is not counted: `measured` reads only the server's counters.
  emit "$scenario" "$round" "$transport" "msg/s" "$rate" "" "" "$echoed" "$err"
  log "$scenario round $round $transport: ${rate:-?} msg/s"
}

run_idle() {
  local scenario=$1 round=$2 transport=$3
  local base="$WORK/$scenario-$round-$transport"
  # One request first so JIT and pools are warm; "before" is then a server with no connections open.
  curl -sS --max-time 5 -o /dev/null "http://127.0.0.1:$SRV_PORT/plaintext"
  sleep 1
  local before; before="$(rss_kib "$SERVER_PID")"
  local release="$base.release"; rm -f "$release"
  "${CLIENT_PIN[@]}" dotnet "$CLIENT_DLL" idle --port "$SRV_PORT" --count "$IDLE_CONNECTIONS" --hold-seconds 120 --release-file "$release" >"$base.txt" 2>&1 &
  IDLE_PID=$!
  local ready=""
  for _ in $(seq 1 1200); do   # 120 s at most
    ready="$(grep -m1 '^IDLE-READY' "$base.txt")"; [[ -n "$ready" ]] && break
    kill -0 "$IDLE_PID" 2>/dev/null || break
    sleep 0.1
  done
  sleep 1   # let the server finish setting the last connections up
  local after; after="$(rss_kib "$SERVER_PID")"
  touch "$release"
  wait "$IDLE_PID"; local status=$?; IDLE_PID=""
  local done_line; done_line="$(grep -m1 '^IDLE-DONE' "$base.txt")"
  local err=0
  if [[ $status -ne 0 || -z "$ready" || -z "$done_line" ]]; then
    err=1
    record_error "$scenario" "$round" "$transport" "idle connections: ${done_line:-${ready:-$(tail -2 "$base.txt" | tr '\n' ' ')}}"
  fi
  local per_conn=""
  [[ -n "$before" && -n "$after" ]] && per_conn="$(awk -v a="$after" -v b="$before" -v n="$IDLE_CONNECTIONS" 'BEGIN { printf "%.2f", (a - b) / n }')"
  M_CPU_US=""; M_SYSCALLS=""; M_CTX=""
  emit "$scenario" "$round" "$transport" "KiB/conn" "$per_conn" "" "" "$IDLE_CONNECTIONS" "$err"
  log "$scenario round $round $transport: RSS ${before} KiB -> ${after} KiB with $IDLE_CONNECTIONS idle = ${per_conn:-?} KiB/conn"
}

# trickle-memory: every connection sends a 1,893-byte request head one byte per packet and never finishes it, so the
# server holds all of it; the RSS it costs per connection shows memory that grows with packets instead of bytes.
run_trickle() {
  local scenario=$1 round=$2 transport=$3
  local base="$WORK/$scenario-$round-$transport"
  curl -sS --max-time 5 -o /dev/null "http://127.0.0.1:$SRV_PORT/plaintext"
  sleep 1
  local before; before="$(rss_kib "$SERVER_PID")"
  local release="$base.release"; rm -f "$release"
  "${CLIENT_PIN[@]}" dotnet "$CLIENT_DLL" trickle --port "$SRV_PORT" --count "$TRICKLE_CONNECTIONS" --bytes 1893 \
    --hold-seconds 300 --release-file "$release" >"$base.txt" 2>&1 &
  IDLE_PID=$!
  local ready=""
  for _ in $(seq 1 3000); do   # 300 s at most
    ready="$(grep -m1 '^TRICKLE-READY' "$base.txt")"; [[ -n "$ready" ]] && break
    kill -0 "$IDLE_PID" 2>/dev/null || break
    sleep 0.1
  done
  sleep 1   # let the server take in the last round
  local after; after="$(rss_kib "$SERVER_PID")"
  touch "$release"
  wait "$IDLE_PID"; local status=$?; IDLE_PID=""
  local done_line; done_line="$(grep -m1 '^TRICKLE-DONE' "$base.txt")"
  local err=0
  if [[ $status -ne 0 || -z "$ready" || -z "$done_line" ]]; then
    err=1
    record_error "$scenario" "$round" "$transport" "trickling connections: ${done_line:-${ready:-$(tail -2 "$base.txt" | tr '\n' ' ')}}"
  fi
  local per_conn=""
  [[ -n "$before" && -n "$after" ]] && per_conn="$(awk -v a="$after" -v b="$before" -v n="$TRICKLE_CONNECTIONS" 'BEGIN { printf "%.2f", (a - b) / n }')"
  M_CPU_US=""; M_SYSCALLS=""; M_CTX=""
  emit "$scenario" "$round" "$transport" "KiB/conn" "$per_conn" "" "" "$TRICKLE_CONNECTIONS" "$err"
  log "$scenario round $round $transport: RSS ${before} KiB -> ${after} KiB with $TRICKLE_CONNECTIONS trickling = ${per_conn:-?} KiB/conn (${ready#TRICKLE-READY })"
}

# Transfers run in LoadClient, not curl: curl piped into sha256sum ran at ~200 MiB/s here, the speed of the pipe
# and the hash rather than of the transport. The client compares a download byte for byte with the pattern as it
# arrives and compares an upload's server-side SHA-256 with the pattern's.
run_transfer() {
  local scenario=$1 round=$2 transport=$3
  local base="$WORK/$scenario-$round-$transport"
  local mib; mib="$(awk -v b="$TRANSFER_BYTES" 'BEGIN { printf "%.3f", b / 1048576 }')"
  measured "$scenario" "$round" "$transport" "$base.txt" -- "${CLIENT_PIN[@]}" dotnet "$CLIENT_DLL" transfer \
    --mode "$scenario" --port "$SRV_PORT" --bytes "$TRANSFER_BYTES" --timeout-seconds 300
  local status=$?
  local line; line="$(grep -m1 '^TRANSFER-DONE' "$base.txt")"
  local rate="" err=0
  if [[ $status -ne 0 || "$line" != *" ok=True "* ]]; then
    err=1
    record_error "$scenario" "$round" "$transport" "transfer failed: ${line:-$(tail -2 "$base.txt" | tr '\n' ' ')}"
  else
    rate="$(sed -n 's/.* mibPerSec=\([0-9.]*\).*/\1/p' <<<"$line")"
  fi
  emit "$scenario" "$round" "$transport" "MiB/s" "$rate" "" "" "$mib" "$err"
  log "$scenario round $round $transport: ${rate:-?} MiB/s over $mib MiB, $([[ $err -eq 0 ]] && echo 'bytes verified' || echo 'FAILED')"
}

# functional: one request per endpoint, each answer checked exactly.
run_functional() {
  local scenario=$1 round=$2 transport=$3
  local base="$WORK/$scenario-$round-$transport" url="http://127.0.0.1:$SRV_PORT" failures=0
  check() { # check NAME EXPECTED ACTUAL
    if [[ "$2" != "$3" ]]; then
      failures=$((failures + 1)); record_error "$scenario" "$round" "$transport" "$1: expected '$2', got '$(head -c 200 <<<"$3")'"
    fi
  }
  check "/plaintext" "200 Hello, World!" "$(curl -sS --max-time 5 -w ' %{http_code}' "$url/plaintext" 2>&1 | awk '{ c = $NF; $NF = ""; sub(/ $/, ""); print c, $0 }')"
  check "/json" '{"message":"Hello, World!"}' "$(curl -sS --max-time 5 "$url/json" 2>&1)"
  check "/wait" "Hello, World!" "$(curl -sS --max-time 5 "$url/wait" 2>&1)"
  head -c 300000 /dev/urandom >"$base.random"
  check "/echo (300,000 random bytes)" "$(sha256sum <"$base.random" | cut -d' ' -f1)" \
    "$(curl -sS --max-time 10 -X POST --data-binary @"$base.random" "$url/echo" 2>&1 | sha256sum | cut -d' ' -f1)"
  local body64k; body64k="$(printf '0123456789abcdef%.0s' $(seq 1 4096))"
  check "/hash (the 64 KiB wrk body)" "$(printf '%s' "$body64k" | sha256sum | cut -d' ' -f1) 65536" \
    "$(printf '%s' "$body64k" | curl -sS --max-time 10 -X POST --data-binary @- "$url/hash" 2>&1)"
  check "/bytes/1000003" "$(dotnet "$CLIENT_DLL" pattern --bytes 1000003 | sha256sum | cut -d' ' -f1)" \
    "$(curl -sS --max-time 10 "$url/bytes/1000003" 2>&1 | sha256sum | cut -d' ' -f1)"
  check "h2c /plaintext" "2 Hello, World!" "$(curl -sS --max-time 5 --http2-prior-knowledge -w ' %{http_version}' "http://127.0.0.1:$SRV_H2_PORT/plaintext" 2>&1 | awk '{ v = $NF; $NF = ""; sub(/ $/, ""); print v, $0 }')"
  if ! dotnet "$CLIENT_DLL" ws --port "$SRV_PORT" --connections 4 --messages 20 --size 70000 >"$base.ws.txt" 2>&1; then
    failures=$((failures + 1)); record_error "$scenario" "$round" "$transport" "/ws echo: $(grep -m1 WS-DONE "$base.ws.txt" || tail -2 "$base.ws.txt" | tr '\n' ' ')"
  fi
  M_CPU_US=""; M_SYSCALLS=""; M_CTX=""
  emit "$scenario" "$round" "$transport" "checks failed" "$failures" "" "" "" "$([[ $failures -gt 0 ]] && echo 1 || echo 0)"
  log "$scenario round $round $transport: $([[ $failures -eq 0 ]] && echo 'all endpoints correct' || echo "$failures check(s) FAILED")"
}

# ---------------------------------------------------------------- main loop
{
  echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "mode=$([[ $QUICK -eq 1 ]] && echo quick || echo full)"
  echo "kernel=$(uname -r)"
  echo "cpus=$(nproc)"
  echo "cpu_model=$CPU_MODEL"
  echo "memory=$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
  echo "dotnet_sdk=$(dotnet --version 2>/dev/null)"
  echo "wrk=$(wrk -v 2>&1 | head -1 | awk '{ print $2 }')"
  echo "h2load=$(h2load --version 2>&1 | head -1 | awk '{ print $NF }')"
  echo "rounds=$ROUNDS"
  echo "duration_s=$DURATION"
  echo "warmup_s=$WARMUP"
  echo "ports=$PORT-$((PORT + PORT_SPAN - 1))$PORT_NOTE"
  echo "ceiling=perf/Ceiling: one thread, epoll, no HTTP stack, port $CEILING_PORT$([[ $PIN -eq 1 ]] && echo ', on CPU 0')"
  echo "proxy_backend=$([[ $NEED_PROXY -eq 1 ]] && echo "BenchmarkServer on the socket transport, port $BACKEND_PORT, one process for the whole run" || echo 'not used')"
  echo "servers=$([[ $FRESH -eq 1 ]] && echo 'a new server for every run' || echo 'one per transport and scheduling mode, kept across scenarios; new ones for idle-memory and trickle-memory')"
  echo "pin=$([[ $PIN -eq 1 ]] && echo 'server on CPU 0, load generators on CPU 1' || echo no)"
  echo "load_threads=$WRK_THREADS"
  echo "dispatchers=${DISPATCHERS:-default}"
  echo "allow_fallback=$([[ $ALLOW_FALLBACK -eq 1 ]] && echo yes || echo no)"
  echo "fault=$FAULT"
  echo "idle_connections=$IDLE_CONNECTIONS"
  echo "trickle_connections=$TRICKLE_CONNECTIONS"
  echo "transfer_bytes=$TRANSFER_BYTES"
  echo "syscall_counter=$([[ $SYSCALL_COUNTER -eq 1 ]] && echo 'perf raw_syscalls:sys_enter' || echo 'unavailable (n/a)')"
  echo "load_at_start=$(cut -d' ' -f1-3 /proc/loadavg)"
} >"$WORK/meta.env"

START_SECONDS=$SECONDS
log "perf run $STAMP: ${#SELECTED[@]} scenario(s) x $ROUNDS round(s) x 2 transports; raw output in ${WORK#"$REPO_DIR"/}"
for scenario in "${SELECTED[@]}"; do
  if [[ "$scenario" == ceiling ]]; then   # one responder, no transport to alternate
    for round in $(seq 1 "$ROUNDS"); do run_ceiling "$round"; done
    continue
  fi
  inline=0; [[ "$scenario" == inline-* ]] && inline=1
  for round in $(seq 1 "$ROUNDS"); do
    for transport in sockets proactor; do   # A, B, A, B, ...
      fresh=0; [[ "$scenario" == idle-memory || "$scenario" == trickle-memory ]] && fresh=1   # RSS deltas need a server with no history
      if ! acquire_server "$transport" "$inline" "$scenario" "$round" "$fresh"; then
        M_CPU_US=""; M_SYSCALLS=""; M_CTX=""; SERVER_BACKEND="${SERVER_BACKEND:-none}"
        emit "$scenario" "$round" "$transport" "" "" "" "" "" 1
        continue
      fi
      echo "runtime=$SERVER_RUNTIME" >"$WORK/runtime.env"
      case "$scenario" in
        functional) run_functional "$scenario" "$round" "$transport" ;;
        h2c-plaintext) run_h2load "$scenario" "$round" "$transport" ;;
        proxy) run_proxy "$scenario" "$round" "$transport" ;;
        ws-echo) run_ws "$scenario" "$round" "$transport" ;;
        idle-memory) run_idle "$scenario" "$round" "$transport" ;;
        trickle-memory) run_trickle "$scenario" "$round" "$transport" ;;
        upload|download) run_transfer "$scenario" "$round" "$transport" ;;
        *) run_wrk "$scenario" "$round" "$transport" ;;
      esac
      release_server "$transport" "$inline" "$scenario" "$round" "$fresh"
    done
  done
done
for key in "${!KEPT_PID[@]}"; do forget_kept "$key" "${KEPT_LAST[$key]:-shutdown}" "-" "${key%-*}"; done
for name in "${!AUX_PID[@]}"; do stop_aux "$name"; done
ELAPSED=$((SECONDS - START_SECONDS))
{
  cat "$WORK/runtime.env" 2>/dev/null
  echo "load_at_end=$(cut -d' ' -f1-3 /proc/loadavg)"
  echo "elapsed_s=$ELAPSED"
  [[ -f "$WORK/fallback-reason.txt" ]] && echo "fallback_reason=$(head -1 "$WORK/fallback-reason.txt")"
} >>"$WORK/meta.env"

# ---------------------------------------------------------------- report
if ! dotnet "$REPORT_DLL" --raw "$RAW" --errors "$ERRORS" --meta "$WORK/meta.env" --out "$RESULT_BASE"; then
  echo "run.sh: the report could not be written (raw data is in $WORK)" >&2
  exit 1
fi
if ! dotnet "$CHART_DLL" --ratios "$RESULT_BASE.csv" --out "$RESULT_BASE.png" --title "proactor / sockets, $(basename "$RESULT_BASE")"; then
  record_error "report" "-" "-" "the chart could not be drawn"
  printf '\n**Error: the chart could not be drawn (see the run log).**\n' >>"$RESULT_BASE.md"
fi
cat "$RESULT_BASE.md"
ERROR_COUNT=$(wc -l <"$ERRORS")
log "done in ${ELAPSED}s: ${RESULT_BASE#"$REPO_DIR"/}.md, .csv, .png; $ERROR_COUNT error(s)"
[[ $ERROR_COUNT -eq 0 ]]
