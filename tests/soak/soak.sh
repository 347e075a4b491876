#!/usr/bin/env bash
# Soak: N minutes of mixed wrk load (GET /plaintext + POST /echo, tests/soak/mixed.lua) plus fault injection
# (tests/soak/faults.py: resets mid upload and mid download, slow headers, 32 MiB uploads, garbage), after a
# 100,000-connection connect/close storm, against KestrelProactor.StressHost on the proactor transport.
#
#   tests/soak/soak.sh [--minutes N] [--port P] [--connections C] [--storm N] [--kind proactor|inline|singleshot]
#
# Every minute it prints RSS, descriptors, threads, lent receive buffers and transport connections. It fails
# (exit 1) unless, at the end: descriptors are within +5 and RSS within +20% of the reference sample (minute 2,
# or minute 1 for runs shorter than 3 minutes); no buffer is lent; no handler fault; the well-behaved wrk
# clients saw no non-2xx response, no bad body and no connect/read/write error; and every well-behaved request
# of faults.py (32 MiB uploads, health checks) succeeded.
set -uo pipefail
cd "$(dirname "$0")/../.."

minutes=30 port=5480 connections=32 storm=100000 kind=proactor
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --connections) connections=$2; shift 2 ;;
    --storm) storm=$2; shift 2 ;;
    --kind) kind=$2; shift 2 ;;
    *) echo "soak: unknown argument $1" >&2; exit 2 ;;
  esac
done

command -v wrk >/dev/null || { echo "soak: wrk is required (apt-get install wrk)" >&2; exit 2; }
command -v python3 >/dev/null || { echo "soak: python3 is required" >&2; exit 2; }

work=$(mktemp -d)
host_pid=""
cleanup() {
  [ -n "$host_pid" ] && kill "$host_pid" 2>/dev/null && wait "$host_pid" 2>/dev/null
  jobs -p | xargs -r kill 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

echo "soak: building the stress host"
dotnet build tests/KestrelProactor.StressHost -c Release -v q -nologo >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 2; }
host_dll=tests/KestrelProactor.StressHost/bin/Release/net10.0/KestrelProactor.StressHost.dll

dotnet exec "$host_dll" --port "$port" --kind "$kind" >"$work/host.log" 2>&1 &
host_pid=$!
for _ in $(seq 1 100); do grep -q "STRESSHOST READY" "$work/host.log" && break; sleep 0.2; done
grep "STRESSHOST READY" "$work/host.log" || { echo "soak: the host did not start"; cat "$work/host.log"; exit 1; }
base="http://127.0.0.1:$port"

stats() {
  # One line: minute, RSS (KiB), descriptors, threads, then the transport's gauges from /stats.
  local rss fds threads json
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$host_pid/status" 2>/dev/null || echo 0)
  fds=$(ls "/proc/$host_pid/fd" 2>/dev/null | wc -l)
  threads=$(ls "/proc/$host_pid/task" 2>/dev/null | wc -l)
  json=$(curl -s --max-time 10 "$base/stats" || echo '{}')
  python3 - "$1" "$rss" "$fds" "$threads" "$json" <<'PY'
import json, sys
minute, rss, fds, threads, raw = sys.argv[1:6]
try:
    s = json.loads(raw)
except ValueError:
    s = {}
print(f"SOAK-STATS minute={minute} rss_kib={rss} fds={fds} threads={threads} "
      f"lent={s.get('receive_buffers_lent', '?')} connections={s.get('connections', '?')} "
      f"in_flight={s.get('operations_in_flight', '?')} handler_faults={s.get('handler_faults', '?')} "
      f"cq_overflows={s.get('cq_overflows', '?')} buffers_exhausted={s.get('receive_buffers_exhausted', '?')} "
      f"requests={s.get('requests', '?')}")
PY
}

stats 0 | tee -a "$work/stats.log"
status=0

echo "soak: connect/close storm of $storm connections"
python3 tests/soak/faults.py storm --port "$port" --count "$storm" | tee "$work/storm.log" || status=1

seconds=$((minutes * 60))
echo "soak: $minutes minute(s) of wrk ($connections connections) plus fault injection"
wrk -t2 -c"$connections" -d"${seconds}s" --timeout 10s -s tests/soak/mixed.lua "$base" >"$work/wrk.log" 2>&1 &
wrk_pid=$!
python3 tests/soak/faults.py faults --port "$port" --seconds "$seconds" >"$work/faults.log" 2>&1 &
faults_pid=$!

for minute in $(seq 1 "$minutes"); do
  sleep 60
  stats "$minute" | tee -a "$work/stats.log"
done

wait "$wrk_pid"
wait "$faults_pid" || status=1
cat "$work/wrk.log" | grep -E "Requests/sec|Latency|SOAK-WRK|Non-2xx|Socket errors" || true
cat "$work/faults.log"

# Let the last fault connections drain (Kestrel's own time-outs included), then take the final sample.
sleep 10
stats end | tee -a "$work/stats.log"

reference=2
[ "$minutes" -lt 3 ] && reference=1
python3 - "$work/stats.log" "$work/wrk.log" "$reference" <<'PY' || status=1
import re, sys
stats_path, wrk_path, reference = sys.argv[1], sys.argv[2], sys.argv[3]
rows = {}
for line in open(stats_path):
    fields = dict(kv.split("=", 1) for kv in line.split()[1:])
    rows[fields["minute"]] = fields
ref, end = rows[reference], rows["end"]
failures = []
if int(end["fds"]) > int(ref["fds"]) + 5:
    failures.append(f"descriptors grew: {ref['fds']} at minute {reference} -> {end['fds']} at the end (allowed +5)")
if int(end["rss_kib"]) > int(ref["rss_kib"]) * 1.2:
    failures.append(f"RSS grew: {ref['rss_kib']} KiB at minute {reference} -> {end['rss_kib']} KiB (allowed +20%)")
if end["lent"] != "0":
    failures.append(f"receive buffers still lent at the end: {end['lent']}")
if end["handler_faults"] != "0":
    failures.append(f"handler faults: {end['handler_faults']}")
wrk = open(wrk_path).read()
m = re.search(r"SOAK-WRK (.*)", wrk)
if not m:
    failures.append("wrk printed no summary:\n" + wrk)
else:
    w = dict(kv.split("=") for kv in m.group(1).split())
    for key in ("non2xx", "bad_bodies", "connect_errors", "read_errors", "write_errors"):
        if w[key] != "0":
            failures.append(f"well-behaved wrk clients: {key}={w[key]}")
print("SOAK-RESULT " + ("PASS" if not failures else "FAIL"))
for f in failures:
    print("SOAK-RESULT " + f)
sys.exit(1 if failures else 0)
PY

if ! kill -0 "$host_pid" 2>/dev/null; then
  echo "soak: the host died"; cat "$work/host.log"; status=1
fi
grep -E "KestrelProactor\[(3|4|5|14)\]" "$work/host.log" && { echo "soak: the transport logged a fault"; status=1; }
exit $status
