#!/usr/bin/env bash
# Slowloris: slowhttptest holds 500 slow-header connections for 60 s against KestrelProactor.StressHost on the
# proactor transport, while wrk measures that normal clients are still served. Prints wrk's numbers without and
# with the attack, slowhttptest's last status, and the host's gauges; exits 1 if the well-behaved clients saw
# errors or non-2xx responses, or the host died.
#
#   tests/soak/slowloris.sh [--port P] [--seconds S] [--slow-connections N]
set -uo pipefail
cd "$(dirname "$0")/../.."

port=5481 seconds=60 slow=500
while [ $# -gt 0 ]; do
  case "$1" in
    --port) port=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --slow-connections) slow=$2; shift 2 ;;
    *) echo "slowloris: unknown argument $1" >&2; exit 2 ;;
  esac
done

command -v slowhttptest >/dev/null || { echo "slowloris: slowhttptest is required (apt-get install slowhttptest)" >&2; exit 2; }
command -v wrk >/dev/null || { echo "slowloris: wrk is required (apt-get install wrk)" >&2; exit 2; }

work=$(mktemp -d)
host_pid=""
cleanup() {
  [ -n "$host_pid" ] && kill "$host_pid" 2>/dev/null && wait "$host_pid" 2>/dev/null
  jobs -p | xargs -r kill 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

dotnet build tests/KestrelProactor.StressHost -c Release -v q -nologo >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 2; }
dotnet exec tests/KestrelProactor.StressHost/bin/Release/net10.0/KestrelProactor.StressHost.dll --port "$port" >"$work/host.log" 2>&1 &
host_pid=$!
for _ in $(seq 1 100); do grep -q "STRESSHOST READY" "$work/host.log" && break; sleep 0.2; done
grep -q "STRESSHOST READY" "$work/host.log" || { echo "slowloris: the host did not start"; cat "$work/host.log"; exit 1; }
url="http://127.0.0.1:$port/plaintext"
status=0

summary() {
  # $1: label, $2: wrk output file
  local rps p99 non2xx errors
  rps=$(awk '/Requests\/sec/ {print $2}' "$2")
  p99=$(awk '$1 == "99%" {print $2}' "$2")
  non2xx=$(awk '/Non-2xx/ {print $NF}' "$2"); non2xx=${non2xx:-0}
  errors=$(grep -o "Socket errors:.*" "$2" || echo "Socket errors: none")
  echo "SLOWLORIS $1 requests/s=$rps p99=$p99 non2xx=$non2xx $errors"
  if [ "$non2xx" != 0 ] || grep -qE "Socket errors:.*(connect [1-9]|read [1-9]|write [1-9])" "$2"; then status=1; fi
}

wrk -t1 -c16 -d15s --latency "$url" >"$work/wrk-before.log" 2>&1
summary "without-attack" "$work/wrk-before.log"

slowhttptest -H -c "$slow" -r 250 -i 10 -x 24 -p 5 -l "$seconds" -u "$url" >"$work/slow.log" 2>&1 &
slow_pid=$!
sleep 5
wrk -t1 -c16 -d$((seconds - 10))s --latency "$url" >"$work/wrk-during.log" 2>&1 &
wrk_pid=$!
# Kestrel's RequestHeadersTimeout (30 s by default) ends each slow connection: sample while they are held.
sleep 10
curl -s --max-time 10 "http://127.0.0.1:$port/stats" | sed 's/^/SLOWLORIS stats-at-15s /'; echo
wait "$wrk_pid"
summary "during-attack" "$work/wrk-during.log"
curl -s --max-time 10 "http://127.0.0.1:$port/stats" | sed 's/^/SLOWLORIS stats-at-55s /'; echo
wait "$slow_pid"
# slowhttptest's last status block: connected / pending / closed / service available.
sed 's/\x1b\[[0-9;]*m//g' "$work/slow.log" | grep -E "connected:|pending:|closed:|service available:" | tail -4 | sed 's/^[[:space:]]*/SLOWLORIS slowhttptest /'
sleep 2
curl -s --max-time 10 "http://127.0.0.1:$port/stats" | sed 's/^/SLOWLORIS stats-after /'; echo
kill -0 "$host_pid" 2>/dev/null || { echo "slowloris: the host died"; cat "$work/host.log"; status=1; }
exit $status
