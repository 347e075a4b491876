#!/usr/bin/env bash
# Two instances of the ScaleOut site behind nginx, under wrk load, restarted one after the other (SIGTERM, wait for
# the drain, start again). Prints wrk's totals and exits non-zero if any request failed: a non-2xx/3xx response or
# a socket error (connect, read, write, timeout), or if an instance did not stop cleanly.
#
#   samples/ScaleOut/run.sh            # 30 s of load, 32 connections
#   DURATION=60 CONNECTIONS=64 samples/ScaleOut/run.sh
#   NEXT_UPSTREAM=off samples/ScaleOut/run.sh   # without nginx's retries: shows the failures the check catches
#
# Everything listens on 127.0.0.1 only; nginx runs from a temporary prefix with its own config (not the system
# service). Every wait is bounded.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
DURATION=${DURATION:-30}
CONNECTIONS=${CONNECTIONS:-32}
LB_PORT=${LB_PORT:-5200}
PORT_A=${PORT_A:-5201}
PORT_B=${PORT_B:-5202}
NEXT_UPSTREAM=${NEXT_UPSTREAM:-error timeout http_502 http_503}
STOP_WAIT=${STOP_WAIT:-40}   # seconds to wait for an instance to drain and exit (its ShutdownTimeout is 20)

log() { printf 'scaleout: %s\n' "$*"; }

need=()
command -v nginx >/dev/null || need+=(nginx)
command -v wrk >/dev/null || need+=(wrk)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    log "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    log "needs ${need[*]} (Debian: apt-get install ${need[*]})"; exit 2
  fi
fi

for port in "$LB_PORT" "$PORT_A" "$PORT_B"; do
  if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/"; then
    log "port $port on 127.0.0.1 is in use; set LB_PORT, PORT_A, PORT_B"; exit 2
  fi
done

work=$(mktemp -d /tmp/scaleout.XXXXXX)
declare -A pids=()
nginx_pid=""
wrk_pid=""

cleanup() {
  local pid
  [ -n "$wrk_pid" ] && kill "$wrk_pid" 2>/dev/null || true
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -n "$nginx_pid" ] && kill -QUIT "$nginx_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work/app"
  log "logs kept in $work"
}
trap cleanup EXIT

log "building the site (Release) into $work/app"
dotnet build "$here/ScaleOut.csproj" -c Release -o "$work/app" -nologo -v q -nodeReuse:false >"$work/build.log" 2>&1 \
  || { cat "$work/build.log"; exit 1; }

wait_ready() { # port: up to 20 s for /healthz
  local i
  for i in $(seq 1 200); do
    curl -fs -o /dev/null --max-time 1 "http://127.0.0.1:$1/healthz" && return 0
    sleep 0.1
  done
  return 1
}

start_instance() { # name port
  Instance=$1 ASPNETCORE_URLS="http://127.0.0.1:$2" DOTNET_gcServer=0 \
    dotnet "$work/app/ScaleOut.dll" --contentRoot "$work/app" >>"$work/$1.log" 2>&1 &
  pids[$1]=$!
  wait_ready "$2" || { log "instance $1 did not become ready on port $2"; cat "$work/$1.log"; exit 1; }
  log "instance $1 (pid ${pids[$1]}) serves on 127.0.0.1:$2: $(curl -s --max-time 2 "http://127.0.0.1:$2/")"
}

stop_instance() { # name: SIGTERM, then wait for the drain to end
  local name=$1 pid=${pids[$1]} i started status
  started=$(date +%s%N)
  kill -TERM "$pid"
  for i in $(seq 1 $((STOP_WAIT * 10))); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "instance $name did not exit within ${STOP_WAIT}s of SIGTERM"; kill -KILL "$pid"; exit 1
  fi
  status=0; wait "$pid" || status=$?
  unset "pids[$name]"
  log "instance $name drained and exited in $(( ($(date +%s%N) - started) / 1000000 )) ms, exit code $status"
  [ "$status" -eq 0 ] || stop_failures=$((stop_failures + 1))
}

mkdir -p "$work/nginx/tmp"
cat >"$work/nginx/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
$( [ "$(id -u)" -eq 0 ] && echo "user root;" )
events { worker_connections 1024; }
http {
  log_format lb '\$status \$upstream_addr \$upstream_status';
  access_log $work/nginx/access.log lb;
  client_body_temp_path $work/nginx/tmp/body;
  proxy_temp_path $work/nginx/tmp/proxy;
  fastcgi_temp_path $work/nginx/tmp/fastcgi;
  uwsgi_temp_path $work/nginx/tmp/uwsgi;
  scgi_temp_path $work/nginx/tmp/scgi;

  upstream site {
    # A refused or reset connection takes an instance out for 1 s; nginx retries the request on the other one.
    server 127.0.0.1:$PORT_A max_fails=1 fail_timeout=1s;
    server 127.0.0.1:$PORT_B max_fails=1 fail_timeout=1s;
    keepalive 32;
  }
  server {
    listen 127.0.0.1:$LB_PORT;
    location / {
      proxy_pass http://site;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      # GET is idempotent, so nginx may resend it after "error" even when the upstream had received it
      # (an idle keep-alive connection closed by a draining instance).
      proxy_next_upstream $NEXT_UPSTREAM;
      proxy_next_upstream_tries 3;
      proxy_connect_timeout 1s;
    }
  }
}
NGINX

stop_failures=0
start_instance a "$PORT_A"
start_instance b "$PORT_B"

nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" &
nginx_pid=$!
wait_ready "$LB_PORT" || { log "nginx did not start"; cat "$work/nginx/error.log"; exit 1; }
log "nginx (pid $nginx_pid) balances 127.0.0.1:$LB_PORT over :$PORT_A and :$PORT_B"

log "wrk: ${DURATION}s, $CONNECTIONS connections, 2 threads"
wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --timeout 5s "http://127.0.0.1:$LB_PORT/" >"$work/wrk.txt" 2>&1 &
wrk_pid=$!

# Rolling restart inside the load window: a quarter in, restart a; wait for it; then b.
pause=$((DURATION / 4))
sleep "$pause"
log "rolling restart: instance a"
stop_instance a; start_instance a "$PORT_A"
sleep "$pause"
log "rolling restart: instance b"
stop_instance b; start_instance b "$PORT_B"

status=0; wait "$wrk_pid" || status=$?
wrk_pid=""
[ "$status" -eq 0 ] || { log "wrk exited with $status"; cat "$work/wrk.txt"; exit 1; }

echo "----- wrk -----"
cat "$work/wrk.txt"
echo "---------------"

requests=$(sed -nE 's/^ *([0-9]+) requests in .*/\1/p' "$work/wrk.txt")
non2xx=$(sed -nE 's/^ *Non-2xx or 3xx responses: *([0-9]+).*/\1/p' "$work/wrk.txt")
# wrk prints these lines only when the count is not zero.
read -r connect read_ write timeout < <(sed -nE 's/^ *Socket errors: connect ([0-9]+), read ([0-9]+), write ([0-9]+), timeout ([0-9]+).*/\1 \2 \3 \4/p' "$work/wrk.txt") || true
non2xx=${non2xx:-0}; connect=${connect:-0}; read_=${read_:-0}; write=${write:-0}; timeout=${timeout:-0}
retried=$(grep -c ',' "$work/nginx/access.log" || true)
lb_5xx=$(awk '$1 >= 500' "$work/nginx/access.log" | wc -l)
io_uring=$(cat "$work"/a.log "$work"/b.log | grep -c 'backend io_uring' || true)
failed=$((non2xx + connect + read_ + write + timeout))

log "requests: ${requests:-0}; non-2xx/3xx: $non2xx; socket errors: connect $connect, read $read_, write $write, timeout $timeout"
log "nginx: $retried requests retried on the other instance, $lb_5xx answered 5xx; instance starts on io_uring: $io_uring of 4"
log "instances that did not exit 0 on SIGTERM: $stop_failures"
if [ "$failed" -ne 0 ] || [ "${requests:-0}" -eq 0 ] || [ "$stop_failures" -ne 0 ]; then
  log "FAILED: $failed failed requests"
  exit 1
fi
log "OK: 0 failed requests during the rolling restart"
