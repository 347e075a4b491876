#!/usr/bin/env bash
# Seeded fault-injection runs against the io_uring backend, or the IOCP one under Wine (docs/fault-injection.md).
#
#   tests/fault-injection/run.sh --seeds N [--first S] [--backend io_uring|iocp] [--rate R] [--verbose]
#   tests/fault-injection/run.sh --seed S [--backend B] [--rate R]   # replays one seed, with its faults by kind
#
# Each seed runs a workload against a server whose dispatchers have a fault plan drawn from the seed, then checks
# the invariants. Prints each failing seed with its reasons and the command that replays it, then
# "faults injected: N" and, last, "N seeds, N failed". Exits non-zero when a seed failed. Seeds run in batches,
# one process each, so a seed that crashes or hangs its process is reported and the run goes on after it.
# --backend iocp publishes the host for win-x64 (self-contained) and runs it under Wine, as tests/windows/run-under-wine.sh
# runs the Windows tests (WINE_WORK=DIR keeps the Wine prefix between runs).
set -uo pipefail
cd "$(dirname "$0")/../.."

export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1
seeds=1 first=1 backend=io_uring rate=0.03 verbose="" batch=100 replay=""
# Where the host is built (a long soak can keep its own copy while the tree is rebuilt).
out=${FAULT_HOST_DIR:-artifacts/fault-host}
while [ $# -gt 0 ]; do
  case "$1" in
    --seeds) seeds=$2; shift 2 ;;
    --first) first=$2; shift 2 ;;
    --seed) first=$2; seeds=1; replay=1; verbose=--verbose; shift 2 ;;
    --backend) backend=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --verbose) verbose=--verbose; shift ;;
    *) echo "fault-injection: unknown argument $1" >&2; exit 2 ;;
  esac
done

rate_arg=""
[ "$rate" != 0.03 ] && rate_arg=" --rate $rate"
log=$(mktemp)
cleanup() { rm -f "$log"; }
trap cleanup EXIT
case "$backend" in
  io_uring)
    echo "fault-injection: building the fault host"
    dotnet build tests/KestrelProactor.FaultHost -c Release -v q -nologo -o "$out" >/dev/null \
      || { echo "fault-injection: the build failed" >&2; echo "$seeds seeds, $seeds failed"; exit 1; }
    host=(dotnet "$out/KestrelProactor.FaultHost.dll")
    ;;
  iocp)
    out=$out-win
    wine=/usr/lib/wine/wine64 wineserver=/usr/lib/wine/wineserver64
    if ! [ -x "$wine" ]; then
      echo "fault-injection: installing wine64 (Debian's package)"
      { DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wine64 >/dev/null; } \
        || { echo "fault-injection: installing wine64 failed" >&2; echo "$seeds seeds, $seeds failed"; exit 1; }
    fi
    echo "fault-injection: publishing the fault host for win-x64"
    dotnet publish tests/KestrelProactor.FaultHost -c Release -r win-x64 --self-contained -p:RuntimeFrameworkVersion=10.0.12 \
      -v q -nologo -o "$out" >/dev/null \
      || { echo "fault-injection: the publish failed" >&2; echo "$seeds seeds, $seeds failed"; exit 1; }
    # As tests/windows/run-under-wine.sh: a private prefix, no display, no debug chatter, W^X off for CoreCLR.
    wine_work=${WINE_WORK:-$(mktemp -d)}
    [ -n "${WINE_WORK:-}" ] || remove_work=$wine_work
    export WINEPREFIX=$wine_work/prefix WINEDEBUG=-all DOTNET_EnableWriteXorExecute=0
    unset DISPLAY
    mkdir -p "$WINEPREFIX"
    cleanup() { rm -f "$log"; "$wineserver" -k 2>/dev/null || true; [ -z "${remove_work:-}" ] || rm -rf "$remove_work"; }
    "$wineserver" -p
    "$wine" wineboot -i >/dev/null 2>&1 || true
    host=("$wine" "$out/KestrelProactor.FaultHost.exe" --backend iocp)
    rate_arg="$rate_arg --backend iocp"
    ;;
  *) echo "fault-injection: unknown backend '$backend' (io_uring or iocp)" >&2; exit 2 ;;
esac

injected=0 failed=0 seed=$first last=$((first + seeds - 1))
while [ "$seed" -le "$last" ]; do
  count=$(( last - seed + 1 < batch ? last - seed + 1 : batch ))
  # A seed takes well under a minute even when everything in it times out; a batch past this limit hangs.
  timeout $(( 60 + count * 60 )) "${host[@]}" \
    --first "$seed" --seeds "$count" --rate "$rate" $verbose >"$log" 2>&1
  status=$?
  # A Windows program ends its lines with CR LF.
  sed -i 's/\r$//' "$log"
  # Per seed: its line, the lines under it when it failed; a failing seed gets its replay command.
  awk -v verbose="$verbose" -v rate_arg="$rate_arg" '
    /^seed [0-9]+: / { s = $2; sub(":", "", s); bad = ($3 != "ok"); if (bad || verbose != "") print; if (bad) print "  replay: tests/fault-injection/run.sh --seed " s rate_arg; next }
    /^  / { if (bad || verbose != "") print; next }
    /^warm-up/ { print; bad = 1; next }
    /^iocp: / { if (!noted) print; noted = 1; next }
  ' "$log"
  done_seeds=$(grep -c '^seed [0-9]*: ' "$log")
  bad_seeds=$(grep -c '^seed [0-9]*: FAILED' "$log")
  faults=$(sed -nE 's/^faults injected: ([0-9]+)$/\1/p' "$log" | tail -1)
  if [ -z "$faults" ]; then
    # The process ended without its summary: count what it reported, then the seed it was on as failed.
    faults=$(sed -nE 's/^seed [0-9]+: .* faults=([0-9]+) .*/\1/p' "$log" | awk '{ s += $1 } END { print s + 0 }')
    faults=${faults:-0}
    crashed=$((seed + done_seeds))
    if [ "$crashed" -le "$last" ]; then
      echo "seed $crashed: FAILED the host process ended (exit $status) during this seed; its last output:"
      tail -5 "$log" | sed 's/^/  /'
      echo "  replay: tests/fault-injection/run.sh --seed $crashed$rate_arg"
      bad_seeds=$((bad_seeds + 1))
      done_seeds=$((done_seeds + 1))
    fi
  fi

  injected=$((injected + faults))
  failed=$((failed + bad_seeds))
  seed=$((seed + done_seeds))
  # Progress of a long run, one line per batch.
  [ "$seeds" -gt "$batch" ] && echo "fault-injection: $((seed - first)) of $seeds seeds, $failed failed, $injected faults so far"
  [ "$done_seeds" -eq 0 ] && break
done

echo "faults injected: $injected"
echo "$seeds seeds, $failed failed"
[ "$failed" -eq 0 ]
