using System.Diagnostics.Metrics;
using System.Net;
using KestrelProactor.Dispatching;
using KestrelProactor.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.Extensions.Diagnostics.HealthChecks;

namespace KestrelProactor.Tests.Operations;

/// <summary>
/// The transport's health check, registered with one line and served at /healthz: Healthy on the native backend,
/// Unhealthy once a dispatcher has failed (which, and why). Degraded, on the socket fallback, is checked in the
/// child process that denies io_uring to itself (<c>FallbackHealthTests</c>). Shares the dispatcher's loop hook.
/// </summary>
[Collection(DispatcherHookCollection.Name)]
public sealed class HealthCheckTests
{
    private const string CheckName = ProactorHealthChecksBuilderExtensions.DefaultName;

    [Fact]
    public async Task NativeBackend_IsHealthy_AndNamesIt()
    {
        await using WebApplication app = await StartAsync();
        string url = Url(app);

        using var client = new HttpClient { Timeout = TestTimeouts.Default };
        using HttpResponseMessage response = await client.GetAsync(url + "/healthz").DefaultTimeout();
        string body = await response.Content.ReadAsStringAsync().DefaultTimeout();
        HealthReportEntry entry = (await CheckAsync(app)).Entries[CheckName];

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal("Healthy", body);
        Assert.Equal(HealthStatus.Healthy, entry.Status);
        Assert.Equal(TransportFactories.ExpectedBackend, entry.Data["backend"]);
        Assert.Equal(2, entry.Data["dispatchers"]);
        Assert.StartsWith(TransportFactories.ExpectedBackend, entry.Description);
    }

    [Fact]
    public async Task DispatcherFailed_IsUnhealthy_NamingTheDispatcherAndWhy()
    {
        WebApplication app = await StartAsync();
        try
        {
            string url = Url(app);
            ProactorDispatcher[] dispatchers = Factory(app).Backend!.Dispatchers;
            // Not the one that accepts (its listener is an owner beside its connections): the others keep accepting.
            await WaitUntilAsync(() => dispatchers.Count(d => d.ConnectionCount > d.OpenConnections) == 1);
            ProactorDispatcher target = dispatchers.First(d => d.ConnectionCount == d.OpenConnections);
            ProactorDispatcher.TestLoopHook = d =>
            {
                if (ReferenceEquals(d, target))
                {
                    throw new InvalidOperationException("injected ring failure");
                }
            };
            try
            {
                // Any work item wakes the dispatcher; its next pass fails.
                target.Schedule(static _ => { }, null);
                await WaitUntilAsync(() => target.HasFailed);
                await target.Ended.DefaultTimeout();
            }
            finally
            {
                ProactorDispatcher.TestLoopHook = null;
            }

            using var client = new HttpClient { Timeout = TestTimeouts.Default };
            using HttpResponseMessage response = await client.GetAsync(url + "/healthz").DefaultTimeout();
            HealthReportEntry entry = (await CheckAsync(app)).Entries[CheckName];

            Assert.Equal(HttpStatusCode.ServiceUnavailable, response.StatusCode);
            Assert.Equal(HealthStatus.Unhealthy, entry.Status);
            Assert.Contains($"dispatcher {target.Id} failed: injected ring failure", entry.Description);
            Assert.Contains("1 of 2 still serve", entry.Description);
            Assert.Equal("injected ring failure", entry.Exception?.Message);
            Assert.Equal(1, entry.Data["failed"]);

            // The meter counts it too (the failed loop's teardown reports it, just after HasFailed turns true).
            await WaitUntilAsync(() => DispatcherFailures(app) == 1);
        }
        finally
        {
            await app.StopAsync().DefaultTimeout();
            await app.DisposeAsync().AsTask().DefaultTimeout();
        }
    }

    [Fact]
    public async Task TransportNotRegistered_IsUnhealthy_SayingSo()
    {
        WebApplicationBuilder builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.UseKestrel(k => k.Listen(IPAddress.Loopback, 0));
        builder.Services.AddHealthChecks().AddProactorTransport();
        await using WebApplication app = builder.Build();
        await app.StartAsync().DefaultTimeout();

        HealthReportEntry entry = (await CheckAsync(app)).Entries[CheckName];
        await app.StopAsync().DefaultTimeout();

        Assert.Equal(HealthStatus.Unhealthy, entry.Status);
        Assert.Contains("UseProactorTransport", entry.Description);
    }

    private static async Task<WebApplication> StartAsync()
    {
        WebApplicationBuilder builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.UseKestrel(k => k.Listen(IPAddress.Loopback, 0));
        builder.WebHost.UseProactorTransport(o => TransportFactories.Configure(TransportKind.Proactor, o));
        builder.Services.AddHealthChecks().AddProactorTransport();
        WebApplication app = builder.Build();
        app.MapHealthChecks("/healthz");
        await app.StartAsync().DefaultTimeout();
        return app;
    }

    /// <summary>The host's own <c>kestrel.proactor.dispatcher_failures</c>, read as a metrics exporter would.</summary>
    private static long DispatcherFailures(WebApplication app)
    {
        var scope = app.Services.GetRequiredService<IMeterFactory>();
        long total = 0;
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter.Name == "KestrelProactor" && ReferenceEquals(instrument.Meter.Scope, scope) &&
                instrument.Name == "kestrel.proactor.dispatcher_failures")
            {
                l.EnableMeasurementEvents(instrument);
            }
        };
        listener.SetMeasurementEventCallback<long>((_, value, _, _) => total += value);
        listener.Start();
        listener.RecordObservableInstruments();
        return total;
    }

    private static Task<HealthReport> CheckAsync(WebApplication app)
        => app.Services.GetRequiredService<HealthCheckService>().CheckHealthAsync().DefaultTimeout();

    private static string Url(WebApplication app)
        => app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();

    private static ProactorTransportFactory Factory(WebApplication app)
        => app.Services.GetServices<IConnectionListenerFactory>().OfType<ProactorTransportFactory>().Single();

    private static async Task WaitUntilAsync(Func<bool> condition)
    {
        using var deadline = new CancellationTokenSource(TestTimeouts.Default);
        while (!condition())
        {
            await Task.Delay(20, deadline.Token);
        }
    }
}
