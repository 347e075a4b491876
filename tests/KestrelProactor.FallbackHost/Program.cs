// A web host for the fallback tests, run as a child process. Arguments:
//   --deny-io-uring EPERM|ENOSYS|EACCES   deny io_uring to this process with a seccomp filter before anything else
//   --seccomp-profile PATH               run under a container seccomp profile (JSON), compiled into a filter
//   --drop-syscalls a,b,c                leave these names out of that profile (what a runtime's default does)
//   --no-fallback                        AllowSocketTransportFallback = false
//   --probe                              only report what io_uring_setup returns, then exit
// Prints one line "FALLBACKHOST READY url=<url> backend=<ActiveBackend> reason=<FallbackReason>" once it serves,
// and stops when standard input closes or after 60 seconds. GET /healthz answers with the transport's health check:
// "<status>: <description>".
using System.Net;
using KestrelProactor;
using KestrelProactor.FallbackHost;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Diagnostics.HealthChecks;
using Microsoft.Extensions.Diagnostics.HealthChecks;

string? deny = null;
string? profile = null;
var dropped = new HashSet<string>(StringComparer.Ordinal);
bool noFallback = false;
bool probeOnly = false;
for (int i = 0; i < args.Length; i++)
{
    switch (args[i])
    {
        case "--deny-io-uring" when i + 1 < args.Length:
            deny = args[++i];
            break;
        case "--seccomp-profile" when i + 1 < args.Length:
            profile = args[++i];
            break;
        case "--drop-syscalls" when i + 1 < args.Length:
            dropped.UnionWith(args[++i].Split(',', StringSplitOptions.RemoveEmptyEntries));
            break;
        case "--no-fallback":
            noFallback = true;
            break;
        case "--probe":
            probeOnly = true;
            break;
        default:
            Console.Error.WriteLine($"FALLBACKHOST unknown argument: {args[i]}");
            return 2;
    }
}

if (deny is not null)
{
    IoUringDenial.Install(IoUringDenial.ParseErrno(deny));
}

if (profile is not null)
{
    SeccompProfile.Install(profile, dropped);
}

if (probeOnly)
{
    Console.WriteLine($"FALLBACKHOST PROBE io_uring_setup={IoUringDenial.Probe()}");
    return 0;
}

var builder = WebApplication.CreateSlimBuilder(Array.Empty<string>());
builder.Logging.ClearProviders();
builder.Logging.AddSimpleConsole(o => o.SingleLine = true);
builder.Logging.SetMinimumLevel(LogLevel.Information);
builder.WebHost.UseKestrel(k => k.Listen(IPAddress.Loopback, 0));
builder.WebHost.UseProactorTransport(o => o.AllowSocketTransportFallback = !noFallback);
builder.Services.AddHealthChecks().AddProactorTransport();

var app = builder.Build();
app.MapGet("/", () => "ok");
app.MapHealthChecks("/healthz", new HealthCheckOptions
{
    ResponseWriter = static (context, report) =>
    {
        HealthReportEntry entry = report.Entries[ProactorHealthChecksBuilderExtensions.DefaultName];
        return context.Response.WriteAsync($"{entry.Status}: {entry.Description}");
    },
});

try
{
    await app.StartAsync();
}
catch (Exception ex)
{
    // The tests read the reason from here; the exit code says the host did not start.
    Console.WriteLine($"FALLBACKHOST START FAILED {ex}");
    await app.DisposeAsync();
    return 3;
}

var factory = app.Services.GetServices<IConnectionListenerFactory>().OfType<ProactorTransportFactory>().Single();
var url = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
Console.WriteLine($"FALLBACKHOST READY url={url} backend={factory.ActiveBackend} reason={factory.FallbackReason}");

// Standard input closing is the parent's way of saying stop; the time limit covers a parent that died.
var stdinClosed = Task.Run(() =>
{
    using var stdin = Console.OpenStandardInput();
    var buffer = new byte[256];
    while (stdin.Read(buffer, 0, buffer.Length) > 0)
    {
    }
});
await Task.WhenAny(stdinClosed, Task.Delay(TimeSpan.FromSeconds(60)));

await app.StopAsync(new CancellationTokenSource(TimeSpan.FromSeconds(5)).Token);
await app.DisposeAsync();
return 0;
