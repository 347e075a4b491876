#!/usr/bin/env bash
# Keeps NativeAOT working: publishes samples/HelloProactor with PublishAot=true for linux-x64, with every trim and AOT
# warning an error, starts the native binary on a loopback port, and checks that it serves over io_uring and that
# its health check says Healthy. Exits non-zero on any failure; every step is bounded in time.
#
#   tests/aot/run.sh            # installs clang and zlib1g-dev from Debian first, if missing (needs root)
#
# Prints "aot: ok in N s" last when all went well.
set -euo pipefail
cd "$(dirname "$0")/../.."

export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1
started=$SECONDS
fail() { echo "aot: FAILED: $*" >&2; exit 1; }

# The native toolchain: the platform linker is driven through clang, and the runtime links against zlib.
need=()
command -v clang >/dev/null || need+=(clang)
dpkg-query -W -f='${Status}' zlib1g-dev 2>/dev/null | grep -q "install ok installed" || need+=(zlib1g-dev)
if [ ${#need[@]} -gt 0 ]; then
  echo "aot: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  timeout 300 apt-get update -qq >/dev/null || fail "apt-get update"
  timeout 600 apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null || fail "apt-get install ${need[*]}"
fi

work=$(mktemp -d)
server_pid=""
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -KILL "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# -warnaserror turns every warning MSBuild sees into an error, the trim analyzer's (IL2xxx) and the AOT compiler's
# (IL3xxx) included; TrimmerSingleWarn=false reports each one at its call site instead of one line per assembly.
echo "aot: publishing samples/HelloProactor (PublishAot, linux-x64)"
publish_log="$work/publish.log"
if ! timeout 1500 dotnet publish samples/HelloProactor -c Release -r linux-x64 -o "$work/out" \
    -p:PublishAot=true -p:TrimmerSingleWarn=false -p:TreatWarningsAsErrors=true -warnaserror \
    >"$publish_log" 2>&1; then
  grep -E "error|warning" "$publish_log" | sort -u | head -40 >&2 || tail -40 "$publish_log" >&2
  fail "publish"
fi
# Belt and braces: a warning that slipped past -warnaserror still fails the run.
if grep -E ": warning [A-Z]+[0-9]+" "$publish_log" | sort -u | head -20 | grep -q .; then
  grep -E ": warning [A-Z]+[0-9]+" "$publish_log" | sort -u | head -20 >&2
  fail "the publish printed warnings"
fi
binary="$work/out/HelloProactor"
[ -x "$binary" ] || fail "no native binary at $binary"
# A native binary has no managed entry assembly beside it to fall back on.
[ ! -e "$work/out/HelloProactor.dll" ] || fail "the publish produced a managed HelloProactor.dll: not a NativeAOT build"
echo "aot: published $(du -h "$binary" | cut -f1) in $((SECONDS - started)) s"

# Port 0: the kernel picks a free port, and the sample prints the address it got. It runs from its own folder, its
# content root, so it reads the appsettings.json published beside it.
server_log="$work/server.log"
(cd "$work/out" && exec ./HelloProactor --urls http://127.0.0.1:0) >"$server_log" 2>&1 &
server_pid=$!
url=""
for _ in $(seq 1 300); do
  url=$(sed -nE 's/^HelloProactor listening on (http:\/\/[^ ]+) .*/\1/p' "$server_log" | head -1)
  [ -n "$url" ] && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$server_log" >&2; fail "the native binary exited before listening"; }
  sleep 0.1
done
[ -n "$url" ] || { cat "$server_log" >&2; fail "the native binary did not listen within 30 s"; }

body=$(curl -sS --max-time 10 "$url/") || { cat "$server_log" >&2; fail "GET $url/"; }
echo "aot: GET / -> $body"
case "$body" in
  *"proactor transport (io_uring,"*) ;;
  *) cat "$server_log" >&2; fail "GET / was not served over io_uring" ;;
esac

health=$(curl -sS --max-time 10 "$url/healthz") || fail "GET $url/healthz"
echo "aot: GET /healthz -> $(echo "$health" | tr '\n' ' ')"
[ "$(echo "$health" | head -1)" = "Healthy" ] || fail "the health check did not say Healthy"

kill -TERM "$server_pid"
for _ in $(seq 1 100); do
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.1
done
kill -0 "$server_pid" 2>/dev/null && fail "the native binary did not stop within 10 s of SIGTERM"
status=0
wait "$server_pid" || status=$?
server_pid=""
[ "$status" -eq 0 ] || { cat "$server_log" >&2; fail "the native binary exited with $status"; }
grep -q "Proactor transport started: backend io_uring" "$server_log" || { cat "$server_log" >&2; fail "no start-up line"; }

echo "aot: ok in $((SECONDS - started)) s"
