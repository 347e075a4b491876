#!/usr/bin/env bash
# Kestrel's own transport tests (Sockets.FunctionalTests, ASP.NET Core release/10.0) run against this machine's
# shared framework twice: with Kestrel's socket transport, then with the proactor transport built from a given
# checkout. Prints both counts and the tests that fail only with the proactor. Not part of CI: it needs a
# snapshot of the ASP.NET Core sources. docs/kestrel-suite.md explains the build and the harness.
#
# usage: tests/kestrel-suite/run.sh <aspnetcore git dir | extracted aspnetcore source dir> <proactor checkout>
# env:   KSUITE_BUILD=DIR         where everything is built (default /work/ksuite-build; never inside a checkout)
#        KSUITE_COMMIT=SHA        the aspnetcore commit taken from a git dir (default below)
#        KSUITE_PARALLEL=N        test classes run at once (default 2)
#        KSUITE_FILTER=EXPR       a dotnet test --filter expression, applied to both runs
#        KSUITE_MODES="..."       which runs, default "sockets proactor"
#        KSUITE_REUSE_SOCKETS=1   reuse the last socket run made with the same sources, framework and filter
#                                 (it does not depend on the proactor; off by default, as a flaky socket
#                                 failure kept would hide a proactor failure in every later report)
#        KSUITE_LOG_BRIDGE=0      leave the proactor's events under its own logger category (see the docs)
#        KSUITE_CLEAN=1           rebuild the cached pieces (source extract, testing library) too
# Exit status: 0 when no test fails only with the proactor, 1 when some do, 2 when the run could not be made.
set -euo pipefail

die() { echo "kestrel-suite: $*" >&2; exit 2; }
[ $# -eq 2 ] || die "usage: $0 <aspnetcore git dir | extracted source dir> <proactor checkout>"

source_arg=$(cd "$1" 2>/dev/null && pwd) || die "no such directory: $1"
checkout=$(cd "$2" 2>/dev/null && pwd) || die "no such directory: $2"
[ -f "$checkout/src/KestrelProactor/KestrelProactor.csproj" ] || die "$checkout has no src/KestrelProactor/KestrelProactor.csproj"
build=${KSUITE_BUILD:-/work/ksuite-build}
commit=${KSUITE_COMMIT:-b1ba55c2231c77190eaeb232294fbd48eac49ccb}
parallel=${KSUITE_PARALLEL:-2}
modes=${KSUITE_MODES:-sockets proactor}
case "$build/" in "$checkout"/*) die "KSUITE_BUILD must be outside the checkout";; esac
here=$(cd "$(dirname "$0")" && pwd)
case "$build/" in "$(cd "$here/../.." && pwd)"/*) die "KSUITE_BUILD must be outside this repository";; esac

export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1
mkdir -p "$build"
exec 9>"$build/.lock"
flock -n 9 || die "another run holds $build/.lock"
[ "${KSUITE_CLEAN:-0}" = 1 ] && rm -rf "$build/aspnetcore" "$build/testing"

# --- 1. ASP.NET Core sources: only the directories the test project compiles -----------------------------
# FunctionalTests holds the tests; Sockets.FunctionalTests adds SocketTransportTests and the TransportSelector
# this harness replaces; the rest is shared test code and the testing library (Microsoft.AspNetCore.InternalTesting).
paths="src/Servers/Kestrel/test/FunctionalTests src/Servers/Kestrel/test/Sockets.FunctionalTests
  src/Servers/Kestrel/shared/test src/Shared src/Testing/src"
if git --git-dir="$source_arg" rev-parse --verify -q "$commit^{commit}" >/dev/null 2>&1; then
  src=$build/aspnetcore/$commit
  if [ ! -f "$src/.complete" ]; then
    echo "kestrel-suite: extracting aspnetcore ${commit:0:10} from $source_arg"
    rm -rf "$src" && mkdir -p "$src"
    # shellcheck disable=SC2086
    git --git-dir="$source_arg" archive "$commit" $paths | tar -x -C "$src"
    echo "$commit" >"$src/.complete"
  fi
  source_label="aspnetcore ${commit:0:10} (from $source_arg)"
else
  src=$source_arg
  for p in $paths; do [ -d "$src/$p" ] || die "$src is neither a git dir holding $commit nor a source tree with $p"; done
  source_label="aspnetcore sources in $src"
fi

# --- 2. The shared framework the suite compiles against and runs on -------------------------------------
dotnet_root=$(dirname "$(readlink -f "$(command -v dotnet)")")
aspnet_version=$(dotnet --list-runtimes | awk '$1 == "Microsoft.AspNetCore.App" && $2 ~ /^10\.0\./ { print $2 }' | sort -V | tail -1)
[ -n "$aspnet_version" ] || die "no Microsoft.AspNetCore.App 10.0.x runtime"
aspnet_dir=$dotnet_root/shared/Microsoft.AspNetCore.App/$aspnet_version/
[ -f "$aspnet_dir/Microsoft.AspNetCore.Server.Kestrel.Core.dll" ] || die "no Kestrel.Core.dll in $aspnet_dir"

# --- 3. Scaffolding: written only when its text changes, so MSBuild's incremental build holds ------------
proj=$build/proj
mkdir -p "$proj/Sockets.FunctionalTests" "$proj/InternalTesting"
put() { # put FILE < text
  local tmp; tmp=$(mktemp)
  cat >"$tmp"
  if cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mv "$tmp" "$1"; fi
}

# Kestrel.Core and Transport.Sockets grant their internals to "Sockets.FunctionalTests, PublicKey=...": the key
# is read from that grant and the assembly is public-signed with it (a public key is all public signing needs).
key_hex=$(grep -aoE 'Sockets\.FunctionalTests, PublicKey=[0-9a-f]+' "$aspnet_dir/Microsoft.AspNetCore.Server.Kestrel.Core.dll" | head -1 | sed 's/.*PublicKey=//')
[ -n "$key_hex" ] || die "Kestrel.Core grants no internals to Sockets.FunctionalTests"
printf '%s' "$key_hex" | xxd -r -p | put "$proj/key.snk"

put "$proj/NuGet.config" <<'EOF'
<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <packageSources>
    <clear />
    <add key="nuget.org" value="https://api.nuget.org/v3/index.json" />
  </packageSources>
</configuration>
EOF

put "$proj/Directory.Build.props" <<'EOF'
<Project>
  <!-- What the aspnetcore repository's own build gives a test project, reduced to what these two need. -->
  <PropertyGroup>
    <TargetFramework>net10.0</TargetFramework>
    <LangVersion>preview</LangVersion>
    <ImplicitUsings>enable</ImplicitUsings>
    <Nullable>disable</Nullable>
    <SignAssembly>true</SignAssembly>
    <PublicSign>true</PublicSign>
    <AssemblyOriginatorKeyFile>$(MSBuildThisFileDirectory)key.snk</AssemblyOriginatorKeyFile>
    <NoWarn>$(NoWarn);CS1591;CS8002;CA1416;CS0618;SYSLIB0039;SYSLIB0057;NU1603;NU1608;NU1701;xUnit1004;xUnit1012;xUnit1026;xUnit1030;xUnit1031;xUnit2000;xUnit2013</NoWarn>
    <Src>$(KSuiteSource)src/</Src>
    <SharedSourceRoot>$(Src)Shared/</SharedSourceRoot>
    <KestrelSharedSourceRoot>$(Src)Servers/Kestrel/shared/</KestrelSharedSourceRoot>
    <EnableDefaultCompileItems>false</EnableDefaultCompileItems>
    <RollForward>LatestPatch</RollForward>
  </PropertyGroup>
  <ItemGroup>
    <Using Remove="System.Net.Http" />
  </ItemGroup>
</Project>
EOF

# Versions: the aspnetcore commit's eng/Versions.props where nuget.org has them, else the nearest it has.
# Microsoft.DotNet.RemoteExecutor is only on the .NET engineering feed: its one attribute is left out (no
# Kestrel functional test uses it).
put "$proj/InternalTesting/Microsoft.AspNetCore.InternalTesting.csproj" <<'EOF'
<Project Sdk="Microsoft.NET.Sdk">
  <PropertyGroup>
    <AssemblyName>Microsoft.AspNetCore.InternalTesting</AssemblyName>
    <RootNamespace>Microsoft.AspNetCore.InternalTesting</RootNamespace>
    <DefineConstants>$(DefineConstants);INTERNAL_NULLABLE_ATTRIBUTES;AspNetCoreTesting</DefineConstants>
  </PropertyGroup>
  <ItemGroup>
    <Compile Include="$(Src)Testing/src/**/*.cs" Exclude="$(Src)Testing/src/contentFiles/**;$(Src)Testing/src/xunit/RemoteExecutionSupportedAttribute.cs" />
    <Compile Include="$(SharedSourceRoot)TaskExtensions.cs" />
    <Compile Include="$(SharedSourceRoot)ThrowHelpers/ArgumentThrowHelper.cs" />
    <Compile Include="$(SharedSourceRoot)ThrowHelpers/ArgumentNullThrowHelper.cs" />
    <Compile Include="$(SharedSourceRoot)CallerArgument/CallerArgumentExpressionAttribute.cs" />
  </ItemGroup>
  <ItemGroup>
    <FrameworkReference Include="Microsoft.AspNetCore.App" />
    <PackageReference Include="xunit.assert" Version="2.9.2" />
    <PackageReference Include="xunit.extensibility.execution" Version="2.9.2" />
    <PackageReference Include="Serilog.Extensions.Logging" Version="2.0.2" />
    <PackageReference Include="Serilog.Sinks.File" Version="4.1.0" />
  </ItemGroup>
</Project>
EOF

put "$proj/Sockets.FunctionalTests/Sockets.FunctionalTests.csproj" <<'EOF'
<Project Sdk="Microsoft.NET.Sdk">
  <!-- The files of aspnetcore's Sockets.FunctionalTests.csproj, with this harness's TransportSelector. -->
  <PropertyGroup>
    <AssemblyName>Sockets.FunctionalTests</AssemblyName>
    <RootNamespace>Microsoft.AspNetCore.Server.Kestrel.Sockets.FunctionalTests</RootNamespace>
    <DefineConstants>$(DefineConstants);SOCKETS</DefineConstants>
    <ServerGarbageCollection>true</ServerGarbageCollection>
    <IsTestProject>true</IsTestProject>
    <OutputType>Exe</OutputType>
    <KTest>$(Src)Servers/Kestrel/test/</KTest>
  </PropertyGroup>
  <ItemGroup>
    <Using Include="Xunit" />
    <Compile Include="$(KTest)FunctionalTests/**/*.cs" />
    <Compile Include="$(KTest)Sockets.FunctionalTests/**/*.cs" Exclude="$(KTest)Sockets.FunctionalTests/TransportSelector.cs" />
    <Compile Include="TransportSelector.cs;ProactorHarness.cs" />
    <Compile Include="$(SharedSourceRoot)NullScope.cs" />
    <Compile Include="$(SharedSourceRoot)Metrics/TestMeterFactory.cs" />
    <Compile Include="$(SharedSourceRoot)TestResources.cs" />
    <Compile Include="$(SharedSourceRoot)test/SuccessfulTests.cs" />
    <Compile Include="$(KestrelSharedSourceRoot)test/TestServiceContext.cs" />
    <Compile Include="$(KestrelSharedSourceRoot)test/TestConnection.cs" />
    <Compile Include="$(KestrelSharedSourceRoot)test/TestApplicationErrorLoggerLoggedTest.cs" />
    <Compile Include="$(KestrelSharedSourceRoot)test/TestApplicationErrorLogger.cs" />
    <Compile Include="$(KestrelSharedSourceRoot)test/StreamBackedTestConnection.cs" />
    <Compile Include="$(KestrelSharedSourceRoot)test/TestConstants.cs" />
    <Compile Include="$(KestrelSharedSourceRoot)test/KestrelTestLoggerProvider.cs" />
    <Compile Include="$(KestrelSharedSourceRoot)test/LifetimeNotImplemented.cs" />
    <Compile Include="$(KestrelSharedSourceRoot)test/PassThroughConnectionMiddleware.cs" />
    <Compile Include="$(KestrelSharedSourceRoot)test/TestApp.cs" />
    <Compile Include="$(KestrelSharedSourceRoot)test/MetricsAssert.cs" />
    <Compile Include="$(KestrelSharedSourceRoot)test/StreamExtensions.cs" />
    <Compile Include="$(KestrelSharedSourceRoot)test/TransportTestHelpers/*.cs" />
    <Content Include="$(SharedSourceRoot)TestCertificates/*.pfx" LinkBase="shared/TestCertificates" CopyToOutputDirectory="PreserveNewest" />
    <None Include="xunit.runner.json" CopyToOutputDirectory="PreserveNewest" />
  </ItemGroup>
  <ItemGroup>
    <!-- What InternalTesting's build/Microsoft.AspNetCore.InternalTesting.props adds to a test assembly. -->
    <AssemblyAttribute Include="Xunit.TestFramework">
      <_Parameter1>Microsoft.AspNetCore.InternalTesting.AspNetTestFramework</_Parameter1>
      <_Parameter2>Microsoft.AspNetCore.InternalTesting</_Parameter2>
    </AssemblyAttribute>
    <AssemblyAttribute Include="Microsoft.AspNetCore.InternalTesting.AssemblyTestLogFixtureAttribute" />
    <AssemblyAttribute Include="Microsoft.AspNetCore.InternalTesting.TestFrameworkFileLoggerAttribute">
      <_Parameter1>false</_Parameter1>
      <_Parameter2>$(TargetFramework)</_Parameter2>
      <_Parameter3>$(KSuiteLogDir)</_Parameter3>
    </AssemblyAttribute>
  </ItemGroup>
  <ItemGroup>
    <FrameworkReference Include="Microsoft.AspNetCore.App" />
    <Reference Include="Microsoft.AspNetCore.InternalTesting" HintPath="$(KSuiteTestingDll)" />
    <Reference Include="KestrelProactor" HintPath="$(KSuiteProactorDll)" />
    <PackageReference Include="Microsoft.NET.Test.Sdk" Version="18.0.1" />
    <PackageReference Include="xunit" Version="2.9.2" />
    <PackageReference Include="xunit.runner.visualstudio" Version="3.1.5" />
    <PackageReference Include="Serilog.Extensions.Logging" Version="2.0.2" />
    <PackageReference Include="Serilog.Sinks.File" Version="4.1.0" />
    <PackageReference Include="Moq" Version="4.18.4" />
    <PackageReference Include="Newtonsoft.Json" Version="13.0.3" />
    <PackageReference Include="Microsoft.Extensions.Diagnostics.Testing" Version="9.10.0" />
    <PackageReference Include="Microsoft.Extensions.TimeProvider.Testing" Version="9.10.0" />
  </ItemGroup>

  <!-- Compile against the shared framework's implementation assemblies: the reference assemblies have no
       internals, and Kestrel.Core and Transport.Sockets grant theirs to this assembly's name and key. -->
  <Target Name="UseSharedFrameworkImplementation" AfterTargets="ResolveTargetingPackAssets">
    <ItemGroup>
      <_KSuiteAspNetRef Include="@(Reference)" Condition="'%(Reference.FrameworkReferenceName)' == 'Microsoft.AspNetCore.App'" />
      <Reference Remove="@(_KSuiteAspNetRef)" />
      <Reference Include="@(_KSuiteAspNetRef->'$(KSuiteAspNetDir)%(Filename)%(Extension)')" />
    </ItemGroup>
    <Error Condition="'@(_KSuiteAspNetRef)' == ''" Text="No Microsoft.AspNetCore.App reference assemblies to replace." />
  </Target>
</Project>
EOF

put "$proj/Sockets.FunctionalTests/xunit.runner.json" <<'EOF'
{
  "appDomain": "denied",
  "longRunningTestSeconds": 60,
  "diagnosticMessages": false
}
EOF

put "$proj/Sockets.FunctionalTests/TransportSelector.cs" <<'EOF'
// The suite's one switch between transports, rewritten for the out-of-tree run: KSUITE_TRANSPORT=proactor
// serves every host the suite builds with the proactor transport; anything else keeps the socket transport.
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.Hosting;

namespace Microsoft.AspNetCore.Server.Kestrel.FunctionalTests;

public static class TransportSelector
{
    public static IHostBuilder GetHostBuilder(long? maxReadBufferSize = null)
    {
        return new HostBuilder()
            .ConfigureWebHost(webHostBuilder =>
            {
                if (ProactorHarness.Selected)
                {
                    ProactorHarness.Use(webHostBuilder, maxReadBufferSize);
                    return;
                }

                webHostBuilder.UseSockets(options =>
                {
                    options.MaxReadBufferSize = maxReadBufferSize;
                });
            });
    }
}
EOF

put "$proj/Sockets.FunctionalTests/ProactorHarness.cs" <<'EOF'
// What the proactor run adds to a host besides UseProactorTransport; each item translates a name, never
// behaviour:
// - no fallback: a host whose proactor cannot start fails; once every hosted service has started (Kestrel has
//   bound), a check fails the host unless the backend is io_uring, and records it in KSUITE_TALLY;
// - the tests configure SocketTransportOptions: options the proactor has under the same name and type (or its
//   nullable form) (FinOnError) are copied to ProactorTransportOptions, found by reflection so that a proactor
//   without them still builds;
// - the tests watch the socket transport's logger category and event ids: a proactor event whose name the
//   socket transport also logs is written under that category with the socket transport's id; its level, message
//   and moment stay the proactor's. Events the socket transport has no twin for keep the proactor's category.
//   KSUITE_LOG_BRIDGE=0 turns this off.
using System.Diagnostics.Metrics;
using System.Reflection;
using KestrelProactor;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Server.Kestrel.Transport.Sockets;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace Microsoft.AspNetCore.Server.Kestrel.FunctionalTests;

public static class ProactorHarness
{
    public const string SocketCategory = "Microsoft.AspNetCore.Server.Kestrel.Transport.Sockets";

    public static bool Selected { get; } =
        string.Equals(Environment.GetEnvironmentVariable("KSUITE_TRANSPORT"), "proactor", StringComparison.OrdinalIgnoreCase);

    private static readonly bool BridgeLogs = Environment.GetEnvironmentVariable("KSUITE_LOG_BRIDGE") != "0";
    private static readonly string TallyPath = Environment.GetEnvironmentVariable("KSUITE_TALLY");
    private static readonly object TallyGate = new();

    private static readonly PropertyInfo[] CopiedOptions = typeof(ProactorTransportOptions)
        .GetProperties(BindingFlags.Public | BindingFlags.Instance)
        .Where(p => p.CanWrite && p.Name is "FinOnError")
        .ToArray();

    public static void Use(IWebHostBuilder webHostBuilder, long? maxReadBufferSize)
    {
        webHostBuilder.UseProactorTransport(options =>
        {
            options.MaxReadBufferSize = maxReadBufferSize;
            options.AllowSocketTransportFallback = false;
        });

        webHostBuilder.ConfigureServices(services =>
        {
            services.AddSingleton<IConfigureOptions<ProactorTransportOptions>>(sp =>
                new ConfigureNamedOptions<ProactorTransportOptions>(Options.DefaultName, options =>
                {
                    var socketOptions = sp.GetRequiredService<IOptions<SocketTransportOptions>>().Value;
                    foreach (var property in CopiedOptions)
                    {
                        // FinOnError is internal in SocketTransportOptions (the tests reach it through InternalsVisibleTo).
                        var source = typeof(SocketTransportOptions).GetProperty(property.Name, BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Instance);
                        if (source is not null && (source.PropertyType == property.PropertyType
                                                   || source.PropertyType == Nullable.GetUnderlyingType(property.PropertyType)))
                        {
                            var value = source.GetValue(socketOptions);
                            property.SetValue(options, value);
                            Record($"copied {property.Name}={value}");
                        }
                    }
                }));

            if (BridgeLogs)
            {
                var registered = services.LastOrDefault(d => d.ServiceType == typeof(IConnectionListenerFactory)
                                                             && d.ImplementationType == typeof(ProactorTransportFactory))
                    ?? throw new InvalidOperationException("UseProactorTransport registered no ProactorTransportFactory the harness can wrap.");
                services.Remove(registered);
                services.AddSingleton<IConnectionListenerFactory>(sp => new ProactorTransportFactory(
                    sp.GetRequiredService<IOptions<ProactorTransportOptions>>(),
                    new SocketCategoryLoggerFactory(sp.GetRequiredService<ILoggerFactory>()),
                    sp.GetService<IMemoryPoolFactory<byte>>(),
                    sp.GetService<IMeterFactory>(),
                    sp));
            }

            services.AddHostedService<IoUringCheck>();
        });
    }

    internal static void Record(string line)
    {
        if (TallyPath is null)
        {
            return;
        }

        lock (TallyGate)
        {
            File.AppendAllText(TallyPath, line + Environment.NewLine);
        }
    }

    // StartedAsync runs once every hosted service has started, the web host's (which binds Kestrel) included:
    // the web host registers its own after the callbacks that registered this one.
    private sealed class IoUringCheck(IEnumerable<IConnectionListenerFactory> factories) : IHostedLifecycleService
    {
        public Task StartedAsync(CancellationToken cancellationToken)
        {
            var proactor = factories.OfType<ProactorTransportFactory>().LastOrDefault()
                ?? throw new InvalidOperationException("The host has no ProactorTransportFactory.");
            var backend = proactor.ActiveBackend ?? "unbound";
            Record("backend " + backend);
            if (proactor.ActiveBackend is not null && proactor.ActiveBackend != "io_uring")
            {
                throw new InvalidOperationException($"The proactor runs on {backend}, not io_uring: {proactor.FallbackReason}");
            }

            return Task.CompletedTask;
        }

        public Task StartingAsync(CancellationToken cancellationToken) => Task.CompletedTask;

        public Task StartAsync(CancellationToken cancellationToken) => Task.CompletedTask;

        public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;

        public Task StoppingAsync(CancellationToken cancellationToken) => Task.CompletedTask;

        public Task StoppedAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    }
}

internal sealed class SocketCategoryLoggerFactory(ILoggerFactory inner) : ILoggerFactory
{
    // The socket transport's events by name, read from its [LoggerMessage] declarations.
    internal static readonly IReadOnlyDictionary<string, EventId> SocketEvents = ReadSocketEvents();

    public ILogger CreateLogger(string categoryName)
    {
        var logger = inner.CreateLogger(categoryName);
        return categoryName.StartsWith("KestrelProactor", StringComparison.Ordinal)
            ? new Bridge(logger, inner.CreateLogger(ProactorHarness.SocketCategory))
            : logger;
    }

    public void AddProvider(ILoggerProvider provider) => inner.AddProvider(provider);

    // The host owns the wrapped factory.
    public void Dispose()
    {
    }

    private static Dictionary<string, EventId> ReadSocketEvents()
    {
        var events = new Dictionary<string, EventId>(StringComparer.Ordinal);
        foreach (var type in typeof(SocketTransportOptions).Assembly.GetTypes())
        {
            foreach (var method in type.GetMethods(BindingFlags.Static | BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.DeclaredOnly))
            {
                if (method.GetCustomAttribute<LoggerMessageAttribute>() is { } attribute)
                {
                    var name = attribute.EventName ?? method.Name;
                    events[name] = new EventId(attribute.EventId, name);
                }
            }
        }

        if (events.Count == 0)
        {
            throw new InvalidOperationException("No [LoggerMessage] events found in the socket transport.");
        }

        foreach (var (name, id) in events)
        {
            ProactorHarness.Record($"socket-event {name} {id.Id}");
        }

        return events;
    }

    private sealed class Bridge(ILogger own, ILogger socket) : ILogger
    {
        public IDisposable BeginScope<TState>(TState state) where TState : notnull => own.BeginScope(state);

        public bool IsEnabled(LogLevel logLevel) => own.IsEnabled(logLevel) || socket.IsEnabled(logLevel);

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception exception, Func<TState, Exception, string> formatter)
        {
            if (eventId.Name is { } name && SocketEvents.TryGetValue(name, out var socketEvent))
            {
                ProactorHarness.Record("bridged " + name);
                socket.Log(logLevel, socketEvent, state, exception, formatter);
            }
            else
            {
                own.Log(logLevel, eventId, state, exception, formatter);
            }
        }
    }
}
EOF

# --- 4. The testing library: built once per source tree and kept ---------------------------------------
testing_dir=$build/testing/$(printf '%s' "$src" | md5sum | cut -c1-12)
testing_dll=$testing_dir/Microsoft.AspNetCore.InternalTesting.dll
if [ ! -f "$testing_dll" ]; then
  echo "kestrel-suite: building Microsoft.AspNetCore.InternalTesting from $src/src/Testing/src"
  dotnet build "$proj/InternalTesting/Microsoft.AspNetCore.InternalTesting.csproj" -c Release -v q -nologo \
    -p:KSuiteSource="$src/" -o "$testing_dir" >"$build/testing-build.log" 2>&1 \
    || { tail -30 "$build/testing-build.log"; die "building the testing library failed ($build/testing-build.log)"; }
fi

# --- 5. The proactor: the checkout's working tree, copied (the checkout is never written to) -------------
# Rebuilt from scratch whenever the copied text differs from the last build's: modification times cannot be
# trusted across checkouts (a file edited before the last build of another checkout looks up to date).
proactor_src=$build/proactor/src
rm -rf "$proactor_src" && mkdir -p "$proactor_src"
(cd "$checkout" && tar -c --exclude=.git --exclude=bin --exclude=obj --exclude=TestResults --exclude=artifacts .) | tar -x -C "$proactor_src"
proactor_hash=$(cd "$proactor_src" && find . -type f -print0 | sort -z | xargs -0 md5sum | md5sum | cut -c1-16)
proactor_label=$checkout
if git -C "$checkout" rev-parse -q HEAD >/dev/null 2>&1; then
  proactor_label="$checkout at $(git -C "$checkout" rev-parse --short HEAD)"
  [ -z "$(git -C "$checkout" status --porcelain --untracked-files=no 2>/dev/null)" ] || proactor_label="$proactor_label (with uncommitted changes)"
fi
proactor_dll=$build/proactor/artifacts/bin/KestrelProactor/release/KestrelProactor.dll
if [ "$(cat "$build/proactor/built-from" 2>/dev/null)" = "$proactor_hash" ] && [ -f "$proactor_dll" ]; then
  echo "kestrel-suite: the proactor from $proactor_label is already built"
else
  echo "kestrel-suite: building the proactor from $proactor_label"
  rm -rf "$build/proactor/artifacts" "$build/proactor/built-from"
  (cd "$proactor_src" && dotnet build src/KestrelProactor/KestrelProactor.csproj -c Release -v q -nologo \
    --artifacts-path "$build/proactor/artifacts") >"$build/proactor-build.log" 2>&1 \
    || { tail -30 "$build/proactor-build.log"; die "building the proactor failed ($build/proactor-build.log)"; }
  echo "$proactor_hash" >"$build/proactor/built-from"
fi

# --- 6. The test assembly --------------------------------------------------------------------------------
echo "kestrel-suite: building Sockets.FunctionalTests against $aspnet_dir"
dotnet build "$proj/Sockets.FunctionalTests/Sockets.FunctionalTests.csproj" -c Release -v q -nologo \
  -p:KSuiteSource="$src/" -p:KSuiteAspNetDir="$aspnet_dir" -p:KSuiteTestingDll="$testing_dll" \
  -p:KSuiteProactorDll="$proactor_dll" -p:KSuiteLogDir="$build/logs/" >"$build/test-build.log" 2>&1 \
  || { grep -E ' error ' "$build/test-build.log" | sort -u | head -30; die "building the test assembly failed ($build/test-build.log)"; }
test_dll=$proj/Sockets.FunctionalTests/bin/Release/net10.0/Sockets.FunctionalTests.dll

# --- 7. The runs ---------------------------------------------------------------------------------------------
results=$build/results
mkdir -p "$results"
filter_args=()
[ -z "${KSUITE_FILTER:-}" ] || filter_args=(--filter "$KSUITE_FILTER")
# A socket run's result is kept per source tree, framework, filter and harness text, for KSUITE_REUSE_SOCKETS.
sockets_key=$(printf '%s|%s|%s|%s' "$src" "$aspnet_version" "${KSUITE_FILTER:-}" "$(cat "$proj"/Sockets.FunctionalTests/*.cs "$proj"/Sockets.FunctionalTests/*.csproj | md5sum)" | md5sum | cut -c1-12)

run_mode() { # run_mode MODE
  local mode=$1 trx=$results/$1.trx
  rm -f "$trx" "$results/$mode.tally"
  if [ "$mode" = sockets ] && [ "${KSUITE_REUSE_SOCKETS:-0}" = 1 ] && [ -f "$results/sockets-$sockets_key.trx" ]; then
    cp -p "$results/sockets-$sockets_key.trx" "$trx"
    echo "kestrel-suite: sockets: reusing the run of $(date -r "$trx" '+%F %T')"
    return
  fi
  echo "kestrel-suite: running with the $mode transport ($parallel test classes at once)"
  local start=$SECONDS
  rm -rf "$build/logs" "$results"/*-*-*-*-*/
  local status=0
  KSUITE_TRANSPORT=$mode KSUITE_TALLY=$results/$mode.tally \
    dotnet test "$test_dll" "${filter_args[@]}" --logger "trx;LogFileName=$mode.trx" --results-directory "$results" \
      --blame-hang-timeout 10m -- "xUnit.MaxParallelThreads=$parallel" >"$results/$mode.log" 2>&1 || status=$?
  rm -rf "$results/$mode-logs" && { [ ! -d "$build/logs" ] || mv "$build/logs" "$results/$mode-logs"; }
  [ -f "$trx" ] || { grep -v '^ |' "$results/$mode.log" | tail -15; die "the $mode run wrote no results (dotnet test exited with $status; $results/$mode.log)"; }
  [ "$mode" != sockets ] || cp "$trx" "$results/sockets-$sockets_key.trx"
  echo "kestrel-suite: $mode run took $((SECONDS - start)) s"
}
for mode in $modes; do run_mode "$mode"; done

# --- 8. The report ---------------------------------------------------------------------------------------
echo
echo "Kestrel's Sockets.FunctionalTests: $source_label; shared framework $aspnet_version; proactor from $proactor_label"
python3 - "$results" "$modes" "$src" <<'EOF'
import collections, glob, os, re, sys, xml.etree.ElementTree as ET
results, modes, src = sys.argv[1], sys.argv[2].split(), sys.argv[3]
# Tests the upstream repository quarantines (known flaky there): marked in the lists below.
quarantined = set()
for path in glob.glob(os.path.join(src, 'src/Servers/Kestrel/test/*FunctionalTests/**/*.cs'), recursive=True):
    text = open(path, encoding='utf-8').read()
    for m in re.finditer(r'\[QuarantinedTest[^\]]*\](?:\s*\[[^\]]*\])*\s*public\s+async\s+\w+\s+(\w+)\s*\(', text):
        quarantined.add(m.group(1))
def mark(name):
    method = re.sub(r'\(.*', '', name).rsplit('.', 1)[-1]
    return ' (quarantined upstream)' if method in quarantined else ''

ns = {'t': 'http://microsoft.com/schemas/VisualStudio/TeamTest/2010'}
runs = {}
for mode in modes:
    outcomes = collections.defaultdict(list)   # test name -> [(outcome, first line of the message)]
    for r in ET.parse(os.path.join(results, mode + '.trx')).getroot().iterfind('.//t:UnitTestResult', ns):
        msg = r.find('.//t:ErrorInfo/t:Message', ns)
        first = (msg.text or '').strip().splitlines()[0][:240] if msg is not None and msg.text else ''
        outcomes[r.get('testName')].append((r.get('outcome'), first))
    runs[mode] = outcomes
    c = collections.Counter(o for v in outcomes.values() for o, _ in v)
    total = sum(c.values())
    print(f"{mode:>9}: {c['Passed']} passed, {c['Failed']} failed, {total - c['Passed'] - c['Failed']} skipped (of {total})")
tally = os.path.join(results, 'proactor.tally')
if 'proactor' in modes:
    lines = open(tally).read().split('\n') if os.path.exists(tally) else []
    backends = collections.Counter(l.split(' ', 1)[1] for l in lines if l.startswith('backend '))
    bridged = collections.Counter(l.split(' ', 1)[1] for l in lines if l.startswith('bridged '))
    copied = collections.Counter(l.split(' ', 1)[1] for l in lines if l.startswith('copied '))
    print("           proactor hosts by backend once started: " + (', '.join(f'{k} {v}' for k, v in sorted(backends.items())) or 'none recorded'))
    print("           proactor events seen under the socket transport's category: " + (', '.join(f'{k} {v}' for k, v in sorted(bridged.items())) or 'none'))
    print("           SocketTransportOptions values copied to the proactor's options (times): " + (', '.join(f'{k} {v}' for k, v in sorted(copied.items())) or 'none (the proactor has no option of the same name)'))
if 'sockets' in runs and 'proactor' in runs:
    def failed(mode, name):
        return sum(1 for o, _ in runs[mode].get(name, []) if o == 'Failed')
    def first_message(name):
        return next((m for o, m in runs['proactor'][name] if o == 'Failed'), '')
    only = sorted(n for n in runs['proactor'] if failed('proactor', n) > failed('sockets', n))
    both = sorted(n for n in runs['proactor'] if failed('proactor', n) and failed('sockets', n))
    sockets_only = sorted(n for n in runs['sockets'] if failed('sockets', n) > failed('proactor', n))
    short = lambda n: n.replace('Microsoft.AspNetCore.Server.Kestrel.Sockets.FunctionalTests.', '')
    print(f"\nfails only with the proactor ({sum(failed('proactor', n) - failed('sockets', n) for n in only)}):")
    for n in only:
        rows = failed('proactor', n)
        print(f"  {short(n)}{f' [{rows} rows]' if rows > 1 else ''}{mark(n)}\n      {first_message(n)}")
    if both:
        print(f"\nfails with both transports ({len(both)}):")
        for n in both:
            print(f"  {short(n)}{mark(n)}")
    if sockets_only:
        print(f"\nfails only with the socket transport ({len(sockets_only)}):")
        for n in sockets_only:
            print(f"  {short(n)}{mark(n)}")
    print(f"\nresults, test logs and runner output: {results}")
    sys.exit(1 if only else 0)
EOF
