#!/usr/bin/env bash
# Proves that run.sh's checks can fail: each case starts the servers broken on purpose (--fault) and expects
# run.sh to exit 1 with the named error in its errors.tsv. A check that never fires would pass every benchmark.
# Usage: perf/self-test.sh [--no-build] [--port P]     (about a minute; loopback only; --port goes to run.sh)
set -uo pipefail
PERF_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BUILD_ARG=""; PORT_ARGS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --no-build) BUILD_ARG="--no-build" ;;
    --port) PORT_ARGS=(--port "${2:?--port needs a value}"); shift ;;
    *) echo "self-test.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
  shift
done

passed=0; failed=0
# expect NAME "RUN.SH ARGS" PATTERN...: run.sh must exit 1 and errors.tsv must match every pattern (grep -E).
expect() {
  local name=$1 args=$2; shift 2
  local log; log="$(mktemp)"
  # shellcheck disable=SC2086 # args is a list of options
  "$PERF_DIR/run.sh" --quick --no-build "${PORT_ARGS[@]}" $args >"$log" 2>&1
  local status=$?
  local work; work="$(sed -n 's/.*raw output in \(.*\)$/\1/p' "$log" | head -1)"
  local errors="$PERF_DIR/../$work/errors.tsv" missing=""
  for pattern in "$@"; do
    grep -Eq -- "$pattern" "$errors" 2>/dev/null || missing+=" '$pattern'"
  done
  if [[ $status -eq 1 && -z "$missing" ]]; then
    passed=$((passed + 1)); echo "PASS $name"
  else
    failed=$((failed + 1)); echo "FAIL $name: exit $status (expected 1)${missing:+, no error matching$missing}; log: $log"
    tail -5 "$log" | sed 's/^/    /'
  fi
}

if [[ -z "$BUILD_ARG" ]]; then
  { dotnet build "$PERF_DIR/perf.slnf" -c Release -nologo -v q && dotnet build "$PERF_DIR/Ceiling/Ceiling.csproj" -c Release -nologo -v q; } \
    >/tmp/perf-build.log 2>&1 || { tail -20 /tmp/perf-build.log; exit 2; }
fi

# Today the proactor falls back to sockets; once io_uring runs here, this case has nothing to catch.
if "$PERF_DIR/run.sh" --quick --no-build "${PORT_ARGS[@]}" --only functional >/dev/null 2>&1; then
  echo "SKIP fallback refused: the proactor runs on its native backend here, there is no fallback to refuse"
else
  expect "fallback refused without --allow-fallback" "--only functional" "proactor requested but backend=sockets"
fi
# The proxy's backend runs with the same fault, so its 500s must come through the proxy and be counted there.
expect "non-2xx responses counted" "--allow-fallback --fault status500 --only plaintext-64,h2c-plaintext,https,proxy" \
  "plaintext-64.*sockets.*wrk errors: status=" "plaintext-64.*proactor.*wrk errors: status=" "h2c-plaintext.*h2load errors:.*5xx:[1-9]" \
  "https.*sockets.*wrk errors: status=" "https.*proactor.*wrk errors: status=" \
  "proxy.*sockets.*wrk errors: status=" "proxy.*proactor.*wrk errors: status="
expect "corrupted bytes caught" "--allow-fallback --fault corrupt-bytes --only functional,upload,download" \
  "functional.*/bytes/1000003: expected" "upload.*sockets.*mismatch at 0" "upload.*proactor.*mismatch at 0" \
  "download.*sockets.*differs from the pattern" "download.*proactor.*differs from the pattern"
expect "crashed server caught" "--allow-fallback --fault crash --only plaintext-64" \
  "plaintext-64.*sockets.*server died" "plaintext-64.*proactor.*server died"

echo "self-test: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
