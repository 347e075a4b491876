#!/usr/bin/env bash
# Runs the Windows (IOCP) tests on Linux under Wine: publishes tests/KestrelProactor.Windows.Tests for win-x64,
# self-contained, and runs the xunit.v3 exe. Exits non-zero when any test fails or the run cannot start.
# The last line is "Windows (IOCP under Wine): PASS|FAIL ... Failed: N, Passed: N, Skipped: N, Total: N".
# usage: tests/windows/run-under-wine.sh [extra xunit.v3 arguments, e.g. -class Name]
# WINE_WORK=DIR keeps the prefix and the published build between runs (default: a fresh temporary directory).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
proj=$root/tests/KestrelProactor.Windows.Tests/KestrelProactor.Windows.Tests.csproj
if [ -n "${WINE_WORK:-}" ]; then
  work=$WINE_WORK
  cleanup=
else
  work=$(mktemp -d)
  cleanup=$work
fi
wine=/usr/lib/wine/wine64
wineserver=/usr/lib/wine/wineserver64

fail_early() {
  echo "Windows (IOCP under Wine): FAIL ($1) Failed: 1, Passed: 0, Skipped: 0, Total: 0"
  exit 1
}

if ! [ -x "$wine" ]; then
  echo "run-under-wine: installing wine64 (Debian's package; about 105 MB)"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends wine64 >/dev/null; } || fail_early "installing wine64 failed"
fi

# CoreCLR 10 fail-fasts under Wine with W^X on; a private prefix, no display, no Wine debug chatter.
export WINEPREFIX=$work/prefix WINEDEBUG=-all DOTNET_EnableWriteXorExecute=0
unset DISPLAY
mkdir -p "$WINEPREFIX"
trap '"$wineserver" -k 2>/dev/null || true; [ -z "$cleanup" ] || rm -rf "$cleanup"' EXIT

echo "run-under-wine: publishing win-x64 (self-contained, runtime 10.0.12)"
dotnet publish "$proj" -c Release -r win-x64 --self-contained \
  -p:RuntimeFrameworkVersion=10.0.12 -o "$work/out" -v q -nologo || fail_early "publish failed"

"$wineserver" -p
"$wine" wineboot -i >/dev/null 2>&1 || true

results=$work/results.xml
rm -f "$results"
status=0
# Tests that cannot work under Wine skip themselves with the reason (Unix socket paths, curl, dup(2), TLS with
# an ECDSA certificate, resets that arrive before the receive is issued).
"$wine" "$work/out/KestrelProactor.Windows.Tests.exe" -noColor -xml "Z:${results//\//\\}" "$@" || status=$?

if [ -f "$results" ]; then
  # The same shape as `dotnet test`'s per-assembly summary, so .ci/run's sum picks it up.
  attr() { grep -o "<assembly [^>]*" "$results" | head -1 | sed -nE "s/.*[[:space:]]$1=\"([0-9]+)\".*/\1/p"; }
  failed=$(attr failed); errors=$(attr errors)
  summary="Failed: $(( ${failed:-0} + ${errors:-0} )), Passed: $(attr passed), Skipped: $(attr skipped), Total: $(attr total)"
  # Name each failed test next to the summary, so a log cut to its last lines still says which one failed.
  grep -o '<test [^>]*result="Fail"' "$results" | sed -nE 's/.* name="([^"]*)".*/Windows (IOCP under Wine): failed: \1/p' || true
else
  summary="(no results: the test exe did not run to the end) Failed: 1, Passed: 0, Skipped: 0, Total: 0"
  [ "$status" -ne 0 ] || status=1
fi

if [ "$status" -eq 0 ]; then
  echo "Windows (IOCP under Wine): PASS $summary"
else
  echo "Windows (IOCP under Wine): FAIL (exit $status) $summary"
fi
exit "$status"
