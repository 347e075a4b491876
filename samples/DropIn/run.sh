#!/usr/bin/env bash
# Builds the transport and this site (which has no reference to it), then runs the site switched to the proactor
# transport by environment variables only. Stop it with Ctrl+C.
#
#   samples/DropIn/run.sh                                   # http://127.0.0.1:5090
#   ASPNETCORE_URLS=http://127.0.0.1:8080 Kestrel__Proactor__DispatcherCount=2 samples/DropIn/run.sh
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out="$root/artifacts/dropin"

# The two builds stand for what a deployment already has: the transport's dll from its package, and a site built
# without it. Neither build sees the variables below (a startup hook applies to every .NET process it is set for).
dotnet build "$root/src/KestrelProactor/KestrelProactor.csproj" -c Release -o "$out/transport" -nologo -v q -clp:NoSummary
dotnet build "$here/DropIn.csproj" -c Release -o "$out/site" -nologo -v q -clp:NoSummary

cd "$out/site"
echo "DropIn: starting the unmodified site with the proactor hosting startup (look for 'backend io_uring' below)"
exec env \
  DOTNET_STARTUP_HOOKS="$out/transport/KestrelProactor.dll" \
  ASPNETCORE_HOSTINGSTARTUPASSEMBLIES=KestrelProactor \
  ASPNETCORE_URLS="${ASPNETCORE_URLS:-http://127.0.0.1:5090}" \
  dotnet DropIn.dll
