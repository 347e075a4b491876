using KestrelProactor;
using KestrelProactor.Perf;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Server.Kestrel.Core;

// The benchmark server: one app, either transport, the same endpoints. The driver (perf/run.sh) reads the
// single "BENCH-READY" line this prints to learn the pid and which backend really serves connections.
if (!BenchmarkServerArguments.TryParse(args, out var arguments, out string argumentError))
{
    Console.Error.WriteLine(argumentError);
    Console.Error.WriteLine(BenchmarkServerArguments.Usage);
    return 2;
}

var builder = WebApplication.CreateSlimBuilder();
if (Environment.GetEnvironmentVariable("PERF_SERVER_LOGGING") != "1") { builder.Logging.ClearProviders(); }
builder.WebHost.ConfigureKestrel(kestrel =>
{
    kestrel.AddServerHeader = false;
    // The 1 GiB upload goes to /hash; the default 30 MB cap would turn it into a 413.
    kestrel.Limits.MaxRequestBodySize = null;
    kestrel.Limits.MaxConcurrentConnections = null;
    kestrel.Limits.MaxConcurrentUpgradedConnections = null;
    // The trickle scenario sends 1,000 request heads one byte per round; on a busy machine that takes longer than
    // the 30 s Kestrel gives a head by default, and the RSS must be read before any is dropped.
    kestrel.Limits.RequestHeadersTimeout = TimeSpan.FromMinutes(5);
    kestrel.Listen(System.Net.IPAddress.Loopback, arguments.Port, listen => listen.Protocols = HttpProtocols.Http1);
    // h2load speaks h2c with prior knowledge, which Kestrel accepts only on an HTTP/2-only cleartext endpoint.
    kestrel.Listen(System.Net.IPAddress.Loopback, arguments.Http2Port, listen => listen.Protocols = HttpProtocols.Http2);
    if (arguments.HttpsPort is int httpsPort)
    {
        var certificate = ProxyAndTls.CreateSelfSignedCertificate();
        kestrel.Listen(System.Net.IPAddress.Loopback, httpsPort, listen =>
        {
            listen.Protocols = HttpProtocols.Http1;
            listen.UseHttps(certificate);
        });
    }
});

if (arguments.ProxyBackendPort is int backendPort)
{
    ProxyAndTls.AddProxy(builder.Services, backendPort);
}

if (arguments.Transport == "proactor")
{
    builder.WebHost.UseProactorTransport(options =>
    {
        // Kestrel__Proactor__* environment variables (and appsettings) set any other option for an experiment.
        builder.Configuration.GetSection(ProactorTransportOptions.ConfigurationSectionName).Bind(options);
        options.UnsafePreferInlineScheduling = arguments.Inline;
        if (arguments.Dispatchers is int dispatchers)
        {
            options.DispatcherCount = dispatchers;
        }
    });
}
else
{
    builder.WebHost.UseSockets(options => options.UnsafePreferInlineScheduling = arguments.Inline);
}

var app = builder.Build();
app.UseWebSockets();
BenchmarkEndpoints.Map(app, arguments.Fault);
if (arguments.ProxyBackendPort is not null)
{
    app.MapReverseProxy();
}

await app.StartAsync();

// After StartAsync every endpoint is bound, so the proactor factory has decided between io_uring and its fallback.
var proactorFactory = app.Services.GetServices<IConnectionListenerFactory>().OfType<ProactorTransportFactory>().FirstOrDefault();
string activeBackend = arguments.Transport == "sockets" ? "sockets" : proactorFactory?.ActiveBackend ?? "unknown";
string fallbackReason = proactorFactory?.FallbackReason ?? "";
Console.WriteLine(
    $"BENCH-READY pid={Environment.ProcessId} transport={arguments.Transport} backend={activeBackend} " +
    $"inline={arguments.Inline} https={arguments.HttpsPort?.ToString() ?? "no"} proxyBackend={arguments.ProxyBackendPort?.ToString() ?? "no"} dispatchers={arguments.Dispatchers?.ToString() ?? "default"} fault={arguments.Fault} " +
    $"runtime={System.Runtime.InteropServices.RuntimeInformation.FrameworkDescription.Replace(' ', '_')} " +
    $"gc={(System.Runtime.GCSettings.IsServerGC ? "server" : "workstation")} fallbackReason=\"{fallbackReason}\"");

await app.WaitForShutdownAsync();
return 0;
